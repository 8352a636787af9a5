"""insightface IResNet-18/34/50/100/200 (arcface_torch ``backbones/iresnet.py``) in Flax, NHWC, inference only.

Architecture (every fact checked against the original; shapes for a 112x112 input):

* stem: conv3x3/1 (64, no bias) -> BN -> PReLU(64)                                   [N, 112, 112, 64]
* 4 stages of ``IBasicBlock`` with widths 64/128/256/512 and blocks per stage
  r18 [2,2,2,2], r34 [3,4,6,3], r50 [3,4,14,3], r100 [3,13,30,3], r200 [6,26,60,6]; the first block of every
  stage has stride 2 and a projection shortcut (conv1x1/2 + BN)                        [N, 7, 7, 512]
* block: BN -> conv3x3/1 -> BN -> PReLU -> conv3x3/stride -> BN, plus shortcut; no activation after the add
* head: BN -> flatten -> (dropout, identity at inference) -> Linear(25088, 512) -> BatchNorm1d(512)
                                                                                       [N, 512]

The original flattens in channel-major (C, H, W) order; here the activations are NHWC and flatten in
(H, W, C) order, so the converters permute the fc kernel rows accordingly (``weights/convert_arcface.py``).
Mixed precision follows the original fp16 mode: the trunk runs in ``dtype``; the fc and the final BN
always run in float32.

Variables (Flax paths): ``conv1``, ``bn1``, ``prelu``, ``layer{1..4}_{b}/{bn1,conv1,bn2,prelu,conv2,bn3}``,
``layer{L}_0/{downsample_conv,downsample_bn}``, ``bn2``, ``fc/{kernel,bias}`` ([25088, 512] in NHWC row
order), ``features`` (scale frozen at 1.0 in training; still a parameter, as in torch).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from synleak_jax.models.layers import BatchNorm, PReLU, torch_conv
from synleak_jax.models.registry import InputSpec, register

Dtype = Any

IRESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)

ARCFACE_SPEC = InputSpec(
    height=112,
    width=112,
    channel_order="RGB",
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
    embedding_dim=512,
    metric="cosine",
    alignment="arcface112",
)


class IBasicBlock(nn.Module):
    """Pre-activation-style IResNet block. Input [N, H, W, C_in] -> [N, H/stride, W/stride, features].

    Shortcut: conv1x1/stride + BN when ``downsample``; otherwise the input itself, subsampled by ``stride``
    (AdaFace's 1x1 max-pool shortcut; insightface IResNet always has ``downsample`` when stride > 1).
    """

    features: int
    stride: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        bn = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = BatchNorm(name="bn1", **bn)(x)
        y = torch_conv(self.features, 3, 1, 1, name="conv1", **conv)(y)
        y = BatchNorm(name="bn2", **bn)(y)
        y = PReLU(param_dtype=self.param_dtype, name="prelu")(y)
        y = torch_conv(self.features, 3, self.stride, 1, name="conv2", **conv)(y)
        # The residual stream stays float32 (convs still compute in ``dtype``): rounding the running sum to
        # bf16 after every block compounds over depth (r200 has 96 blocks).
        y = BatchNorm(name="bn3", dtype=jnp.float32, param_dtype=self.param_dtype)(y)
        if self.downsample:
            x = torch_conv(self.features, 1, self.stride, 0, name="downsample_conv", **conv)(x)
            x = BatchNorm(name="downsample_bn", dtype=jnp.float32, param_dtype=self.param_dtype)(x)
        elif self.stride > 1:
            # AdaFace's shortcut when channels do not change: MaxPool2d(kernel 1, stride) == subsampling.
            x = x[:, :: self.stride, :: self.stride, :]
        return y + x.astype(jnp.float32)


class IResNet(nn.Module):
    """IResNet backbone: normalised float32 NHWC [N, 112, 112, 3] (RGB) -> raw embeddings [N, num_features].

    Attributes:
      blocks: blocks per stage, e.g. (3, 4, 14, 3) for r50.
      num_features: embedding size (512 for every released model).
      dtype: compute dtype of the trunk (bf16 on accelerators); the fc + final BN always run in float32.
      param_dtype: storage dtype of the variables (float32).
      precision: ``jax.lax.Precision`` for convs and the fc (None: JAX default / context).
    """

    blocks: Sequence[int]
    num_features: int = 512
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"IResNet expects NHWC input [N, H, W, 3], got shape {x.shape}")
        conv = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        x = torch_conv(64, 3, 1, 1, name="conv1", **conv)(x)
        x = BatchNorm(name="bn1", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = PReLU(param_dtype=self.param_dtype, name="prelu")(x)
        for stage, (n_blocks, width) in enumerate(zip(self.blocks, STAGE_WIDTHS), start=1):
            for b in range(n_blocks):
                x = IBasicBlock(
                    width,
                    stride=2 if b == 0 else 1,
                    downsample=(b == 0),
                    name=f"layer{stage}_{b}",
                    **conv,
                )(x)
        # Head in float32 (the original runs fc + features outside autocast).
        x = BatchNorm(name="bn2", dtype=jnp.float32, param_dtype=self.param_dtype)(x)
        x = x.reshape(x.shape[0], -1)  # (H, W, C) order; fc kernel rows are permuted to match
        x = nn.Dense(
            self.num_features,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name="fc",
        )(x)
        return BatchNorm(name="features", dtype=jnp.float32, param_dtype=self.param_dtype)(x)


def _make_factory(depth: int):
    def factory(dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, precision: Any = None) -> IResNet:
        return IResNet(IRESNET_BLOCKS[depth], dtype=dtype, param_dtype=param_dtype, precision=precision)

    factory.__name__ = f"iresnet{depth}"
    factory.__doc__ = f"insightface IResNet-{depth}: [N,112,112,3] RGB (x-127.5)/127.5 -> [N,512]."
    return factory


for _depth in IRESNET_BLOCKS:
    register(
        f"iresnet{_depth}",
        ARCFACE_SPEC,
        family="iresnet",
        description=f"insightface arcface_torch IResNet-{_depth} (blocks {IRESNET_BLOCKS[_depth]})",
    )(_make_factory(_depth))
