"""insightface MobileFaceNet (arcface_torch ``backbones/mobilefacenet.py``, ``get_mbf``) in Flax, NHWC.

Structure for the released ``mbf`` (blocks (1, 4, 6, 2), scale 2; shapes for a 112x112 input):

* ``layers.0``: ConvBlock conv3x3/2 3->128 + BN + PReLU                                  [N, 56, 56, 128]
* ``layers.1``: ConvBlock conv3x3/1 128->128, **groups=64** (kernel [128, 2, 3, 3], not depthwise)
* ``layers.2``: DepthWise 128->128 via 128 groups, stride 2 (no residual)                 [N, 28, 28, 128]
* ``layers.3``: Residual, 4 x DepthWise(128, groups 128, stride 1, residual)
* ``layers.4``: DepthWise 128->256 via 256 groups, stride 2                               [N, 14, 14, 256]
* ``layers.5``: Residual, 6 x DepthWise(256, groups 256)
* ``layers.6``: DepthWise 256->256 via 512 groups, stride 2                               [N, 7, 7, 256]
* ``layers.7``: Residual, 2 x DepthWise(256, groups 256)
* ``conv_sep``: ConvBlock conv1x1 256->512                                                 [N, 7, 7, 512]
* ``features`` (GDC): LinearBlock depthwise conv7x7 (512 groups) + BN -> flatten -> Linear(512, 512, no bias)
  -> BatchNorm1d(512)                                                                       [N, 512]

ConvBlock = conv (no bias) + BN + PReLU(C); LinearBlock = conv (no bias) + BN; DepthWise = ConvBlock 1x1
(expand to ``groups`` channels) -> ConvBlock kxk depthwise (stride) -> LinearBlock 1x1 (project), plus the input
when residual. Mixed precision as in the original fp16 mode: ``layers`` in ``dtype``, ``conv_sep`` and
``features`` in float32.

Variables (Flax paths): ``layers_0/{conv,bn,prelu}``, ``layers_1/...``, ``layers_{2,4,6}/{expand,dw,project}``,
``layers_{3,5,7}/block_{i}/{expand,dw,project}``, ``conv_sep``, ``features/{dw/{conv,bn},linear,bn}``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from synleak_jax.models.iresnet import ARCFACE_SPEC
from synleak_jax.models.layers import BatchNorm, PReLU, torch_conv
from synleak_jax.models.registry import register

Dtype = Any


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> (PReLU unless ``linear``). [N, H, W, C_in] -> [N, H', W', features]."""

    features: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    linear: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = torch_conv(
            self.features, self.kernel, self.stride, self.padding, groups=self.groups, name="conv",
            dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
        )(x)
        x = BatchNorm(name="bn", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        if not self.linear:
            x = PReLU(param_dtype=self.param_dtype, name="prelu")(x)
        return x


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` channels -> 3x3 depthwise (stride) -> 1x1 project.

    [N, H, W, C_in] -> [N, H/stride, W/stride, features]; adds the input when ``residual``.
    """

    features: int
    groups: int
    stride: int = 2
    residual: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        y = ConvBlock(self.groups, 1, 1, 0, name="expand", **kw)(x)
        y = ConvBlock(self.groups, 3, self.stride, 1, groups=self.groups, name="dw", **kw)(y)
        y = ConvBlock(self.features, 1, 1, 0, linear=True, name="project", **kw)(y)
        return y + x if self.residual else y


class Residual(nn.Module):
    """``num_block`` residual DepthWise units at constant width. [N, H, W, C] -> [N, H, W, C]."""

    channels: int
    num_block: int
    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        for i in range(self.num_block):
            x = DepthWise(self.channels, self.groups, stride=1, residual=True, name=f"block_{i}", **kw)(x)
        return x


class MobileFaceNet(nn.Module):
    """MobileFaceNet: normalised float32 NHWC [N, 112, 112, 3] (RGB) -> raw embeddings [N, num_features].

    Attributes:
      blocks: residual units in the four Residual groups ((1, 4, 6, 2) for ``mbf``; a first entry of 1 means
        the grouped ConvBlock of the original instead of a Residual group).
      scale: width multiplier (2 for ``mbf``).
      num_features: embedding size (512).
      dtype / param_dtype / precision: as for the other backbones; ``conv_sep`` + ``features`` stay float32.
    """

    # YNNPACK (XLA:CPU's default) runs the depthwise convolutions faster than Eigen: see layers.cpu_compiler_options.
    CPU_EIGEN_CONVS: ClassVar[bool] = False

    blocks: Sequence[int] = (1, 4, 6, 2)
    scale: int = 2
    num_features: int = 512
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"MobileFaceNet expects NHWC input [N, H, W, 3], got shape {x.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        c1, c2 = 64 * self.scale, 128 * self.scale
        x = ConvBlock(c1, 3, 2, 1, name="layers_0", **kw)(x)
        if self.blocks[0] == 1:
            x = ConvBlock(c1, 3, 1, 1, groups=64, name="layers_1", **kw)(x)
        else:
            x = Residual(c1, self.blocks[0], groups=128, name="layers_1", **kw)(x)
        x = DepthWise(c1, groups=128, stride=2, name="layers_2", **kw)(x)
        x = Residual(c1, self.blocks[1], groups=128, name="layers_3", **kw)(x)
        x = DepthWise(c2, groups=256, stride=2, name="layers_4", **kw)(x)
        x = Residual(c2, self.blocks[2], groups=256, name="layers_5", **kw)(x)
        x = DepthWise(c2, groups=512, stride=2, name="layers_6", **kw)(x)
        x = Residual(c2, self.blocks[3], groups=256, name="layers_7", **kw)(x)
        head = dict(dtype=jnp.float32, param_dtype=self.param_dtype, precision=self.precision)
        x = ConvBlock(512, 1, 1, 0, name="conv_sep", **head)(x)
        return GDC(self.num_features, name="features", **head)(x)


class GDC(nn.Module):
    """Global depthwise conv head: dw conv7x7 + BN -> flatten -> Linear (no bias) -> BatchNorm1d.

    [N, 7, 7, 512] -> [N, num_features].
    """

    num_features: int = 512
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = ConvBlock(c, 7, 1, 0, groups=c, linear=True, name="dw", dtype=self.dtype,
                      param_dtype=self.param_dtype, precision=self.precision)(x)
        x = x.reshape(x.shape[0], -1)  # spatial is 1x1 here, so flatten order does not matter
        x = nn.Dense(self.num_features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                     precision=self.precision, name="linear")(x)
        return BatchNorm(name="bn", dtype=self.dtype, param_dtype=self.param_dtype)(x)


@register(
    "mobilefacenet",
    ARCFACE_SPEC,
    family="mobilefacenet",
    description="insightface arcface_torch MobileFaceNet (mbf: blocks (1,4,6,2), scale 2), e.g. w600k_mbf",
)
def mobilefacenet(dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, precision: Any = None):
    """insightface MobileFaceNet: [N,112,112,3] RGB (x-127.5)/127.5 -> [N,512]."""
    return MobileFaceNet(dtype=dtype, param_dtype=param_dtype, precision=precision)
