"""SphereFace-20 (the ``sphere20a`` network of the public PyTorch port) in Flax.

Registered as ``sphereface20``: 112x96 (HxW) input aligned to the ArcFace five-point template shifted 8
pixels left (``arcface112x96``), **BGR** channel order (the port decodes images with OpenCV and feeds them
unchanged), normalised ``(pixel - 127.5) / 128``; 512-D output (``fc5``), compared by cosine.

Structure: four stages, each a stride-2 conv3x3 (pad 1, with bias) + per-channel PReLU followed by
residual units ``x + PReLU(conv(PReLU(conv(x))))`` (no activation after the add); 1, 2, 4 and 1 units at
64, 128, 256, 512 channels (20 conv layers in all); spatial 112x96 -> 56x48 -> 28x24 -> 14x12 -> 7x6.
``fc5`` is a Linear(512*7*6 -> 512) on the channel-major (C, H, W) flatten; the module transposes to that
order before flattening, so the kernel is the plain transpose of the PyTorch weight.

Flax names equal the PyTorch ones (``conv3_5``, ``relu3_5``, ``fc5``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from synleak_jax.models.layers import PReLU
from synleak_jax.models.registry import InputSpec, register

Dtype = Any

# (stage, output channels, residual units)
STAGES = ((1, 64, 1), (2, 128, 2), (3, 256, 4), (4, 512, 1))


class Sphere20a(nn.Module):
    """``[N, 112, 96, 3]`` float32 (normalised BGR) -> raw embeddings ``[N, 512]``."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def conv_act(x, stage, j, features, stride):
            x = nn.Conv(features, (3, 3), (stride, stride), padding=((1, 1), (1, 1)),
                        name=f"conv{stage}_{j}", **kw)(x)
            return PReLU(self.param_dtype, name=f"relu{stage}_{j}")(x)

        x = x.astype(self.dtype)
        for stage, features, units in STAGES:
            x = conv_act(x, stage, 1, features, 2)
            for u in range(units):
                j = 2 + 2 * u
                x = x + conv_act(conv_act(x, stage, j, features, 1), stage, j + 1, features, 1)
        n = x.shape[0]
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(n, -1)  # (C, H, W) flatten order of the original fc5
        return nn.Dense(512, name="fc5", **kw)(x).astype(jnp.float32)


SPHEREFACE_SPEC = InputSpec(
    height=112, width=96, channel_order="BGR", mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0),
    embedding_dim=512, metric="cosine", alignment="arcface112x96",
)


@register("sphereface20", SPHEREFACE_SPEC, family="sphereface",
          description="SphereFace-20 (sphere20a, A-Softmax, CASIA-WebFace; PyTorch-port layout)")
def sphereface20(dtype=jnp.float32, param_dtype=jnp.float32) -> Sphere20a:
    return Sphere20a(dtype=dtype, param_dtype=param_dtype)
