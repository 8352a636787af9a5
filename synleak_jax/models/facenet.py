"""FaceNet Inception-ResNet-v1 (facenet-pytorch layout) in Flax.

Registered as ``facenet_inception_resnet_v1``: 160x160 RGB input normalised as ``(pixel - 127.5) / 128``,
512-D output compared by cosine. The module returns the raw output of ``last_bn`` (facenet-pytorch L2
normalises after it; that belongs to ``synleak_jax.embed`` here).

Structure (input 160 -> spatial sizes): conv3x3/2 (79) -> conv3x3 (77) -> conv3x3 pad 1 (77) ->
maxpool3/2 (38) -> conv1x1 (38) -> conv3x3 (36) -> conv3x3/2 (17, 256 ch) -> 5 x Block35 (scale 0.17)
-> Mixed_6a (8, 896 ch) -> 10 x Block17 (0.10) -> Mixed_7a (3, 1792 ch) -> 5 x Block8 (0.20) ->
Block8 without ReLU (scale 1) -> global average -> Linear 1792->512 (no bias) -> BatchNorm1d.
Every Conv-BN-ReLU unit has a bias-free conv and BN with eps 1e-3; the block output convs have a bias.

Flax module names follow the PyTorch state-dict paths with a Sequential index joined by "_"
(``repeat_1.0.branch1.1.conv`` -> ``repeat_1_0/branch1_1/conv``), which is the whole conversion rule
(``weights/convert_facenet.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from synleak_jax.models.layers import BatchNorm
from synleak_jax.models.registry import InputSpec, register

Dtype = Any

BN_EPS = 1e-3


class ConvBnRelu(nn.Module):
    """Bias-free conv (explicit torch-style padding) -> BatchNorm (running stats, eps 1e-3) -> ReLU.

    ``[N, H, W, Cin] -> [N, H', W', features]``.
    """

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, (self.stride, self.stride), padding=((ph, ph), (pw, pw)),
                    use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
        x = BatchNorm(epsilon=BN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x)
        return nn.relu(x)


def _chain(x, specs: Sequence[tuple], prefix: str, kw: dict):
    """Applies ConvBnRelu units named ``{prefix}_{i}``; specs are (features, kernel, stride, padding)."""
    for i, (f, k, s, p) in enumerate(specs):
        x = ConvBnRelu(f, k, s, p, name=f"{prefix}_{i}", **kw)(x)
    return x


class _ResidualBlock(nn.Module):
    """Shared shape of Block35/17/8: concat of branches -> 1x1 conv (bias) -> x + scale * y (-> ReLU)."""

    width: int  # input/output channels
    branches: tuple  # tuple of tuples of (features, kernel, stride, padding); branch 0 is a single unit
    scale: float
    relu: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        outs = [ConvBnRelu(*self.branches[0][0], name="branch0", **kw)(x)]
        for b, specs in enumerate(self.branches[1:], start=1):
            outs.append(_chain(x, specs, f"branch{b}", kw))
        y = nn.Conv(self.width, (1, 1), name="conv2d", **kw)(jnp.concatenate(outs, axis=-1))
        y = x + self.scale * y
        return nn.relu(y) if self.relu else y


_B35 = (((32, (1, 1), 1, (0, 0)),),
        ((32, (1, 1), 1, (0, 0)), (32, (3, 3), 1, (1, 1))),
        ((32, (1, 1), 1, (0, 0)), (32, (3, 3), 1, (1, 1)), (32, (3, 3), 1, (1, 1))))
_B17 = (((128, (1, 1), 1, (0, 0)),),
        ((128, (1, 1), 1, (0, 0)), (128, (1, 7), 1, (0, 3)), (128, (7, 1), 1, (3, 0))))
_B8 = (((192, (1, 1), 1, (0, 0)),),
       ((192, (1, 1), 1, (0, 0)), (192, (1, 3), 1, (0, 1)), (192, (3, 1), 1, (1, 0))))


def _max_pool_3s2(x):
    return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionResnetV1(nn.Module):
    """``[N, 160, 160, 3]`` float32 (normalised RGB) -> raw embeddings ``[N, 512]`` (last_bn output)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        x = ConvBnRelu(32, (3, 3), 2, name="conv2d_1a", **kw)(x)
        x = ConvBnRelu(32, (3, 3), 1, name="conv2d_2a", **kw)(x)
        x = ConvBnRelu(64, (3, 3), 1, (1, 1), name="conv2d_2b", **kw)(x)
        x = _max_pool_3s2(x)
        x = ConvBnRelu(80, (1, 1), 1, name="conv2d_3b", **kw)(x)
        x = ConvBnRelu(192, (3, 3), 1, name="conv2d_4a", **kw)(x)
        x = ConvBnRelu(256, (3, 3), 2, name="conv2d_4b", **kw)(x)
        for i in range(5):
            x = _ResidualBlock(256, _B35, 0.17, name=f"repeat_1_{i}", **kw)(x)
        x = Mixed6a(name="mixed_6a", **kw)(x)
        for i in range(10):
            x = _ResidualBlock(896, _B17, 0.10, name=f"repeat_2_{i}", **kw)(x)
        x = Mixed7a(name="mixed_7a", **kw)(x)
        for i in range(5):
            x = _ResidualBlock(1792, _B8, 0.20, name=f"repeat_3_{i}", **kw)(x)
        x = _ResidualBlock(1792, _B8, 1.0, relu=False, name="block8", **kw)(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # adaptive avg-pool to 1x1
        x = nn.Dense(512, use_bias=False, name="last_linear", **kw)(x)  # (dropout is identity at inference)
        x = BatchNorm(epsilon=BN_EPS, name="last_bn", **kw)(x)
        return x.astype(jnp.float32)


class Mixed6a(nn.Module):
    """Reduction 17 -> 8: conv3x3/2 | 1x1 -> 3x3 -> 3x3/2 | maxpool3/2; 256 -> 384+256+256 = 896 ch."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b0 = ConvBnRelu(384, (3, 3), 2, name="branch0", **kw)(x)
        b1 = _chain(x, ((192, (1, 1), 1, (0, 0)), (192, (3, 3), 1, (1, 1)), (256, (3, 3), 2, (0, 0))),
                    "branch1", kw)
        return jnp.concatenate([b0, b1, _max_pool_3s2(x)], axis=-1)


class Mixed7a(nn.Module):
    """Reduction 8 -> 3: three conv branches and a max-pool; 896 -> 384+256+256+896 = 1792 ch."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b0 = _chain(x, ((256, (1, 1), 1, (0, 0)), (384, (3, 3), 2, (0, 0))), "branch0", kw)
        b1 = _chain(x, ((256, (1, 1), 1, (0, 0)), (256, (3, 3), 2, (0, 0))), "branch1", kw)
        b2 = _chain(x, ((256, (1, 1), 1, (0, 0)), (256, (3, 3), 1, (1, 1)), (256, (3, 3), 2, (0, 0))),
                    "branch2", kw)
        return jnp.concatenate([b0, b1, b2, _max_pool_3s2(x)], axis=-1)


FACENET_SPEC = InputSpec(
    height=160, width=160, channel_order="RGB", mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0),
    embedding_dim=512, metric="cosine", alignment="facenet160",
)


@register("facenet_inception_resnet_v1", FACENET_SPEC, family="facenet",
          description="FaceNet Inception-ResNet-v1 (facenet-pytorch layout; vggface2 / casia-webface weights)")
def facenet_inception_resnet_v1(dtype=jnp.float32, param_dtype=jnp.float32) -> InceptionResnetV1:
    return InceptionResnetV1(dtype=dtype, param_dtype=param_dtype)
