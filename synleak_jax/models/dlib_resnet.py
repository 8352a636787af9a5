"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in Flax, registered as ``dlib_resnet_v1``.

The network of dlib's ``dnn_face_recognition_ex.cpp`` (the matcher of the ``face_recognition`` package):

  input 150x150 RGB, (pixel - (122.782, 117.001, 104.298)) / 256
  conv 7x7/2, 32 filters, no padding (150 -> 72) -> affine -> ReLU -> max-pool 3x3/2, no padding (72 -> 35)
  3 units at 32 | down + 3 at 64 (35 -> 17) | down + 2 at 128 (17 -> 8) | down + 2 at 256 (8 -> 4) |
  down at 256 (4 -> 2)
  global mean -> fc 256 -> 128 without bias

  unit:      conv3x3/1 (pad 1) -> affine -> ReLU -> conv3x3/1 (pad 1) -> affine, + x, ReLU
  down unit: conv3x3/2 (pad 0) -> affine -> ReLU -> conv3x3/1 (pad 1) -> affine, + avg-pool 2x2/2 (pad 0) of x, ReLU

"affine" is a frozen BatchNorm (per-channel scale and bias). dlib's ``add_prev`` adds tensors of different shapes
by zero-extending both to the elementwise maximum shape: the 32 -> 64 (etc.) channel change is a zero pad of the
shortcut's channels at the end (no projection), and where the strided conv and the pool disagree in size (8x8 ->
conv 3x3, pool 4x4; 4x4 -> conv 1x1, pool 2x2) the smaller map is zero-padded at the bottom/right.

The output is the raw 128-D descriptor (dlib does not normalise it); two faces are the same person when the
Euclidean distance of their descriptors is below 0.6.

Variables (``{"params": ...}`` only): ``stem_conv/{kernel,bias}``, ``stem_affine/{scale,bias}``,
``unit{i}/{conv1,conv2}/{kernel,bias}``, ``unit{i}/{affine1,affine2}/{scale,bias}`` (i = 0..13, input side
first), ``fc/kernel`` [256, 128]. Weights: :func:`synleak_jax.weights.convert_dlib.load_dlib_dat`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from synleak_jax.models.registry import InputSpec, register

Dtype = Any

DLIB_SPEC = InputSpec(
    height=150,
    width=150,
    channel_order="RGB",
    mean=(122.782, 117.001, 104.298),
    std=(256.0, 256.0, 256.0),
    embedding_dim=128,
    metric="euclidean",
    alignment="dlib150",
    threshold=0.6,
)

# (channels, downsample) of the 14 residual units, input side first.
DLIB_UNITS: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)


def dlib_add(a: jax.Array, b: jax.Array) -> jax.Array:
    """dlib's ``add_prev``: sum of two ``[N, H, W, C]`` maps zero-extended to the elementwise max shape.

    Missing rows/columns are added at the bottom/right and missing channels at the end (top-left aligned).
    """
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))

    def pad(x):
        return jnp.pad(x, [(0, s - d) for s, d in zip(shape, x.shape)])

    dtype = jnp.result_type(a.dtype, b.dtype)
    return pad(a.astype(dtype)) + pad(b.astype(dtype))


class Affine(nn.Module):
    """Per-channel ``x * scale + bias`` over the last axis (dlib's ``affine_`` layer, a frozen BatchNorm)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        return x.astype(self.dtype) * scale.astype(self.dtype) + bias.astype(self.dtype)


def _conv(features: int, k: int, stride: int, pad: int, dtype, param_dtype, precision, name: str) -> nn.Conv:
    # Explicit symmetric padding: dlib pads k//2 at stride 1 and nothing at stride 2 (Flax "SAME" would differ).
    return nn.Conv(
        features,
        (k, k),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=True,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        name=name,
    )


class DlibResidualUnit(nn.Module):
    """One residual unit: ``[N, H, W, C_in]`` -> ``[N, H', W', features]`` (H' = H, or the down sizes above)."""

    features: int
    down: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        stride, pad = (2, 0) if self.down else (1, 1)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        y = _conv(self.features, 3, stride, pad, name="conv1", **kw)(x)
        y = nn.relu(Affine(self.dtype, self.param_dtype, name="affine1")(y))
        y = _conv(self.features, 3, 1, 1, name="conv2", **kw)(y)
        y = Affine(self.dtype, self.param_dtype, name="affine2")(y)
        shortcut = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID") if self.down else x
        return nn.relu(dlib_add(y, shortcut.astype(y.dtype)))


class DlibResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1: ``[N, 150, 150, 3]`` normalised RGB -> ``[N, 128]`` (float32).

    Attributes:
      dtype: compute dtype (bfloat16 on accelerators); the final mean and fc run in float32.
      param_dtype: parameter storage dtype.
      precision: ``jax.lax.Precision`` for convs and the fc (use "highest" for float32 parity with dlib on GPU).
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"DlibResNet expects [N, H, W, 3] input, got shape {x.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        x = x.astype(self.dtype)
        x = _conv(32, 7, 2, 0, name="stem_conv", **kw)(x)  # 150 -> 72
        x = nn.relu(Affine(self.dtype, self.param_dtype, name="stem_affine")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")  # 72 -> 35
        for i, (c, down) in enumerate(DLIB_UNITS):
            x = DlibResidualUnit(c, down, name=f"unit{i}", **kw)(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # avg_pool_everything: [N, 256]
        return nn.Dense(
            128,
            use_bias=False,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name="fc",
        )(x)


@register(
    "dlib_resnet_v1",
    DLIB_SPEC,
    family="dlib_resnet",
    description="dlib face-recognition ResNet v1 (face_recognition matcher; 128-D, Euclidean, threshold 0.6)",
)
def dlib_resnet_v1(dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, precision: Any = None) -> DlibResNet:
    """dlib ResNet v1: [N,150,150,3] RGB (x - mean)/256 -> [N,128] raw descriptors."""
    return DlibResNet(dtype=dtype, param_dtype=param_dtype, precision=precision)
