"""AdaFace IR-18/50/101 (mk-minchul/AdaFace ``net.py``, ``Backbone(mode="ir")``) in Flax, NHWC, inference only.

Same block maths as insightface IResNet (BN -> conv3x3/1 -> BN -> PReLU -> conv3x3/stride -> BN, plus the
shortcut), with these differences (checked against ``net.py``):

* blocks per stage: IR-18 [2,2,2,2], IR-50 [3,4,14,3], IR-101 [3,13,30,3] (``get_blocks(18/50/100)``);
* shortcut: ``MaxPool2d(1, stride)`` (i.e. plain subsampling, no parameters) when input and output channels
  are equal -- this includes the first, stride-2 block of stage 1 -- and conv1x1/stride + BN otherwise (the
  first block of stages 2-4);
* output layer: BN2d(512) -> dropout -> flatten (channel-major) -> Linear(25088, 512, bias) ->
  BatchNorm1d(512, affine=False) (running statistics only, no scale/bias parameters);
* the original ``forward`` returns ``(x / ||x||, ||x||)``; per the project's contract this module returns the
  raw output-layer embedding (L2 normalisation is done by ``synleak_jax.embed``);
* inputs are **BGR**, ``(x / 255 - 0.5) / 0.5`` == ``(x - 127.5) / 127.5``.

State-dict keys of the original: ``input_layer.{0 conv,1 bn,2 prelu}``,
``body.N.res_layer.{0 bn,1 conv,2 bn,3 prelu,4 conv,5 bn}``, ``body.N.shortcut_layer.{0 conv,1 bn}``,
``output_layer.{0 bn,3 linear,4 bn1d}``; released as Lightning ``.ckpt`` with a ``model.`` prefix.

Variables (Flax paths): ``input_conv``, ``input_bn``, ``input_prelu``, ``body_{N}`` (an
:class:`~synleak_jax.models.iresnet.IBasicBlock`: ``bn1, conv1, bn2, prelu, conv2, bn3`` and, when it has a
projection, ``downsample_conv, downsample_bn``), ``output_bn``, ``output_fc`` ([25088, 512], NHWC row order),
``output_bn1d`` (batch_stats only).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from synleak_jax.models.iresnet import STAGE_WIDTHS, IBasicBlock
from synleak_jax.models.layers import BatchNorm, PReLU, torch_conv
from synleak_jax.models.registry import InputSpec, register

Dtype = Any

ADAFACE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    50: (3, 4, 14, 3),
    101: (3, 13, 30, 3),
}

ADAFACE_SPEC = InputSpec(
    height=112,
    width=112,
    channel_order="BGR",
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
    embedding_dim=512,
    metric="cosine",
    alignment="arcface112",
)


def adaface_units(blocks: Sequence[int]) -> list[tuple[int, int, int]]:
    """The flat list of ``(in_channels, out_channels, stride)`` of every body unit, in ``body.N`` order."""
    units = []
    in_c = 64
    for n_blocks, width in zip(blocks, STAGE_WIDTHS):
        units.append((in_c, width, 2))
        units.extend((width, width, 1) for _ in range(n_blocks - 1))
        in_c = width
    return units


class AdaFaceIR(nn.Module):
    """AdaFace IR backbone: normalised float32 NHWC [N, 112, 112, 3] (BGR) -> raw embeddings [N, 512].

    Attributes:
      blocks: units per stage, e.g. (3, 13, 30, 3) for IR-101.
      num_features: embedding size (512).
      dtype: compute dtype of the trunk; the output layer's fc and BN1d always run in float32.
      param_dtype: storage dtype of the variables; precision: ``jax.lax.Precision`` for convs and the fc.
    """

    blocks: Sequence[int]
    num_features: int = 512
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"AdaFaceIR expects NHWC input [N, H, W, 3], got shape {x.shape}")
        conv = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        x = torch_conv(64, 3, 1, 1, name="input_conv", **conv)(x)
        x = BatchNorm(name="input_bn", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = PReLU(param_dtype=self.param_dtype, name="input_prelu")(x)
        for i, (in_c, out_c, stride) in enumerate(adaface_units(self.blocks)):
            x = IBasicBlock(out_c, stride=stride, downsample=(in_c != out_c), name=f"body_{i}", **conv)(x)
        x = BatchNorm(name="output_bn", dtype=jnp.float32, param_dtype=self.param_dtype)(x)
        x = x.reshape(x.shape[0], -1)  # (H, W, C) order; fc kernel rows are permuted to match
        x = nn.Dense(
            self.num_features, dtype=jnp.float32, param_dtype=self.param_dtype, precision=self.precision,
            name="output_fc",
        )(x)
        return BatchNorm(
            use_scale=False, use_bias=False, name="output_bn1d", dtype=jnp.float32, param_dtype=self.param_dtype
        )(x)


def _make_factory(depth: int):
    def factory(dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, precision: Any = None) -> AdaFaceIR:
        return AdaFaceIR(ADAFACE_BLOCKS[depth], dtype=dtype, param_dtype=param_dtype, precision=precision)

    factory.__name__ = f"adaface_ir{depth}"
    factory.__doc__ = f"AdaFace IR-{depth}: [N,112,112,3] BGR (x-127.5)/127.5 -> [N,512]."
    return factory


for _depth in ADAFACE_BLOCKS:
    register(
        f"adaface_ir{_depth}",
        ADAFACE_SPEC,
        family="adaface_ir",
        description=f"AdaFace (mk-minchul) IR-{_depth}, units {ADAFACE_BLOCKS[_depth]}, BGR input",
    )(_make_factory(_depth))
