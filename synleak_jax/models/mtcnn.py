"""MTCNN's three networks (P-Net, R-Net, O-Net) in Flax, in the facenet-pytorch layout.

The networks take NHWC float32 RGB input already normalised as ``(pixel - 127.5) * 0.0078125`` and
reproduce the published PyTorch modules (state-dict names ``conv1``, ``prelu1``, ``dense4``, ...; see
``weights/mtcnn_weights.py`` for the mapping). Facts that matter for exact parity:

* every max-pool uses PyTorch's ``ceil_mode=True`` (a partial window at the bottom/right edge is kept);
* PReLU slopes are per channel;
* R-Net and O-Net flatten their last feature map after permuting it to ``(N, W, H, C)`` (the order of
  the original Caffe/TensorFlow weights), so the dense kernels expect that order.

The detection pipeline built on these lives in ``synleak_jax.data.detect``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from synleak_jax.models.layers import PReLU

Dtype = Any

# Input normalisation of all three networks, on RGB pixels in [0, 255].
PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125


def normalize(rgb: jnp.ndarray) -> jnp.ndarray:
    """RGB pixels in [0, 255] (any shape) -> network input ``(x - 127.5) * 0.0078125``, float32."""
    return (jnp.asarray(rgb, jnp.float32) - PIXEL_MEAN) * PIXEL_SCALE


def max_pool_ceil(x: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
    """Max-pool ``[N, H, W, C]`` with PyTorch ``ceil_mode=True`` semantics and no padding.

    Output size per spatial axis: ``ceil((L - window) / stride) + 1`` (every window starts inside the
    input because window >= stride here); the partial last window is filled with -inf.
    """
    pads = []
    for length in x.shape[1:3]:
        out = -(-(length - window) // stride) + 1
        pads.append((0, max(0, (out - 1) * stride + window - length)))
    return nn.max_pool(x, (window, window), (stride, stride), padding=tuple(pads))


class PNet(nn.Module):
    """Proposal network: fully convolutional, a 12x12 receptive field moved with stride 2.

    Input ``[N, H, W, 3]`` (H, W >= 12) -> ``(reg [N, H', W', 4], prob [N, H', W', 2])`` with
    ``H' = ceil((H - 2) / 2) - 4``. ``prob[..., 1]`` is the face probability; ``reg`` are box offsets in
    units of the 12-pixel cell.
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, valid_hw: jnp.ndarray | None = None):
        """Args:
          x: ``[N, H, W, 3]`` normalised RGB.
          valid_hw: optional int32 ``[2]``: the true image size inside a zero-padded ``x`` (size bucketing).
            Outputs at ``[:H'(valid), :W'(valid)]`` then equal those of the unpadded image exactly: the
            conv1 rows/columns that only exist because of the padding are set to -inf before the ceil-mode
            pool, so the partial last window sees exactly what it would see unpadded.
        """
        conv = lambda f, k, name: nn.Conv(f, (k, k), padding="VALID", dtype=self.dtype,
                                          param_dtype=self.param_dtype, name=name)
        act = lambda name: PReLU(self.param_dtype, name=name)
        x = act("prelu1")(conv(10, 3, "conv1")(x))
        if valid_hw is not None:
            rows = jnp.arange(x.shape[1])[:, None] < (valid_hw[0] - 2)
            cols = jnp.arange(x.shape[2])[None, :] < (valid_hw[1] - 2)
            x = jnp.where((rows & cols)[None, :, :, None], x, -jnp.inf)
        x = max_pool_ceil(x, 2, 2)
        if valid_hw is not None:
            x = jnp.where(jnp.isfinite(x), x, 0.0)  # pooled cells wholly in the padding: keep them finite
        x = act("prelu2")(conv(16, 3, "conv2")(x))
        x = act("prelu3")(conv(32, 3, "conv3")(x))
        prob = nn.softmax(conv(2, 1, "conv4_1")(x).astype(jnp.float32), axis=-1)
        reg = conv(4, 1, "conv4_2")(x).astype(jnp.float32)
        return reg, prob


def _flatten_whc(x: jnp.ndarray) -> jnp.ndarray:
    """``[N, H, W, C]`` -> ``[N, W*H*C]`` in (W, H, C) order, the order the original dense weights expect."""
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network. Input ``[N, 24, 24, 3]`` -> ``(reg [N, 4], prob [N, 2])``."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        act = lambda name: PReLU(self.param_dtype, name=name)
        x = act("prelu1")(nn.Conv(28, (3, 3), padding="VALID", name="conv1", **kw)(x))
        x = max_pool_ceil(x, 3, 2)
        x = act("prelu2")(nn.Conv(48, (3, 3), padding="VALID", name="conv2", **kw)(x))
        x = max_pool_ceil(x, 3, 2)
        x = act("prelu3")(nn.Conv(64, (2, 2), padding="VALID", name="conv3", **kw)(x))
        x = act("prelu4")(nn.Dense(128, name="dense4", **kw)(_flatten_whc(x)))
        prob = nn.softmax(nn.Dense(2, name="dense5_1", **kw)(x).astype(jnp.float32), axis=-1)
        reg = nn.Dense(4, name="dense5_2", **kw)(x).astype(jnp.float32)
        return reg, prob


class ONet(nn.Module):
    """Output network. Input ``[N, 48, 48, 3]`` -> ``(reg [N, 4], landmarks [N, 10], prob [N, 2])``.

    ``landmarks`` are 5 x-coordinates then 5 y-coordinates, as fractions of the box width/height.
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        act = lambda name: PReLU(self.param_dtype, name=name)
        x = act("prelu1")(nn.Conv(32, (3, 3), padding="VALID", name="conv1", **kw)(x))
        x = max_pool_ceil(x, 3, 2)
        x = act("prelu2")(nn.Conv(64, (3, 3), padding="VALID", name="conv2", **kw)(x))
        x = max_pool_ceil(x, 3, 2)
        x = act("prelu3")(nn.Conv(64, (3, 3), padding="VALID", name="conv3", **kw)(x))
        x = max_pool_ceil(x, 2, 2)
        x = act("prelu4")(nn.Conv(128, (2, 2), padding="VALID", name="conv4", **kw)(x))
        x = act("prelu5")(nn.Dense(256, name="dense5", **kw)(_flatten_whc(x)))
        prob = nn.softmax(nn.Dense(2, name="dense6_1", **kw)(x).astype(jnp.float32), axis=-1)
        reg = nn.Dense(4, name="dense6_2", **kw)(x).astype(jnp.float32)
        landmarks = nn.Dense(10, name="dense6_3", **kw)(x).astype(jnp.float32)
        return reg, landmarks, prob


NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}
# Example input shapes used to build each net's variables (P-Net is size-agnostic).
EXAMPLE_SHAPES = {"pnet": (1, 12, 12, 3), "rnet": (1, 24, 24, 3), "onet": (1, 48, 48, 3)}
