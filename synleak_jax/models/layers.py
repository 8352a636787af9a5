"""Layers shared by the backbones ported from PyTorch (NHWC, inference only).

PyTorch and Flax differ in three places that silently change outputs when a network is ported:

* padding: ``nn.Conv(padding="SAME")`` pads (0, 1) at stride 2 while ``torch.nn.Conv2d(padding=1)`` pads
  (1, 1); :func:`torch_conv` always pads explicitly, symmetrically, like torch;
* PReLU: ``flax.linen.PReLU`` has one scalar slope, ``torch.nn.PReLU(C)`` one slope per channel;
  :class:`PReLU` is per channel (init 0.25 like torch);
* BatchNorm: torch's default eps is 1e-5 (Flax's 1e-5 too, but FaceNet uses 1e-3); :class:`BatchNorm` always
  uses running statistics (these models are inference only) and normalises in float32 whatever the compute
  dtype, so bf16 activations are only rounded once, after the affine map.

Variable names (stable; the weight converters rely on them):
  * :func:`torch_conv` -> ``nn.Conv``: ``params/<name>/kernel`` [kh, kw, in/groups, out] (+ ``bias`` [out]);
  * :class:`PReLU`: ``params/<name>/negative_slope`` [C];
  * :class:`BatchNorm`: ``params/<name>/scale`` [C] and ``params/<name>/bias`` [C] (each only when enabled),
    ``batch_stats/<name>/mean`` [C], ``batch_stats/<name>/var`` [C].
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
PrecisionLike = Any


def torch_conv(
    features: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    name: str | None = None,
) -> nn.Conv:
    """A ``flax.linen.Conv`` that computes what ``torch.nn.Conv2d`` computes (NHWC instead of NCHW).

    Args:
      features: output channels.
      kernel_size: ``k`` or ``(kh, kw)``.
      stride: ``s`` or ``(sh, sw)``.
      padding: torch-style symmetric zero padding ``p`` or ``(ph, pw)`` in pixels (explicit, never "SAME").
      groups: torch ``groups`` (Flax ``feature_group_count``); kernel shape is [kh, kw, in/groups, out].
      use_bias: whether the conv has a bias (torch ``bias=``).
      dtype: compute dtype (e.g. ``jnp.bfloat16`` on accelerators); param_dtype: storage dtype of the kernel.
      precision: ``jax.lax.Precision`` for the convolution (None = JAX default / context setting).
      name: Flax submodule name.

    Input ``[N, H, W, C_in]`` -> output ``[N, H', W', features]`` with
    ``H' = floor((H + 2 ph - kh) / sh) + 1`` (as torch).
    """
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    st = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pd = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return nn.Conv(
        features=features,
        kernel_size=ks,
        strides=st,
        padding=((pd[0], pd[0]), (pd[1], pd[1])),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        name=name,
    )


class PReLU(nn.Module):
    """Per-channel PReLU (``torch.nn.PReLU(num_parameters=C)``) over the last axis.

    ``y = x if x >= 0 else a_c * x``; parameter ``negative_slope`` [C], initialised to 0.25 like torch.
    Input and output ``[..., C]`` in the input's dtype.
    """

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param(
            "negative_slope", nn.initializers.constant(0.25), (x.shape[-1],), self.param_dtype
        )
        return jnp.where(x >= 0, x, x * slope.astype(x.dtype))


class BatchNorm(nn.Module):
    """Inference BatchNorm over the last axis with running statistics (torch BatchNorm1d/2d in eval mode).

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``, evaluated in float32 (the per-channel affine is
    folded first) and returned in ``dtype`` (the input's dtype when None).

    Attributes:
      use_scale, use_bias: torch ``affine``; ``affine=False`` -> both False (only running stats exist).
      epsilon: torch ``eps`` (1e-5 by default; FaceNet uses 1e-3).
      dtype: output dtype (None: the input dtype); param_dtype: dtype of scale/bias/mean/var.

    Input/output ``[..., C]``.
    """

    use_scale: bool = True
    use_bias: bool = True
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), self.param_dtype)).value
        var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), self.param_dtype)).value
        mul = jax.lax.rsqrt(var.astype(jnp.float32) + self.epsilon)
        if self.use_scale:
            mul = mul * self.param("scale", nn.initializers.ones, (c,), self.param_dtype).astype(jnp.float32)
        add = -mean.astype(jnp.float32) * mul
        if self.use_bias:
            add = add + self.param("bias", nn.initializers.zeros, (c,), self.param_dtype).astype(jnp.float32)
        out_dtype = x.dtype if self.dtype is None else self.dtype
        return (x.astype(jnp.float32) * mul + add).astype(out_dtype)


# XLA:CPU (jax 0.10) hands every convolution to YNNPACK by default. For the 3x3 convolutions of the ResNet-style
# backbones at batch 64 its kernels measured 1.0-1.8x slower than XLA's own (Eigen) convolutions, worst at 7x7
# spatial size and stride 2 (BENCHMARKS.md, "Backbones"); dots stay with YNNPACK. This per-executable option
# keeps YNNPACK for dots only. Pass it as ``jax.jit(f, compiler_options=cpu_compiler_options())``.
_CPU_EIGEN_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.lru_cache(maxsize=None)
def _cpu_options_supported() -> bool:
    """Whether this jaxlib accepts :data:`_CPU_EIGEN_CONV_OPTIONS` (probed once with a tiny CPU conv)."""
    x = jax.ShapeDtypeStruct((1, 4, 4, 32), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    try:
        jax.jit(conv, backend="cpu").lower(x, w).compile(compiler_options=_CPU_EIGEN_CONV_OPTIONS)
    except Exception:  # an XLA version without this option: keep its defaults
        return False
    return True


def cpu_compiler_options(backend: str | None = None, module: nn.Module | None = None) -> dict[str, str]:
    """``compiler_options`` for ``jax.jit`` that make XLA:CPU run convolutions with its Eigen kernels.

    Args:
      backend: the platform the executable targets ("cpu", "gpu", "tpu"); None: ``jax.default_backend()``.
      module: the model the executable runs, if known. A model class whose convolutions YNNPACK runs faster
        opts out with a class attribute ``CPU_EIGEN_CONVS = False`` (MobileFaceNet's depthwise convolutions:
        0.87x with Eigen, measured), and gets ``{}``.

    Returns ``{}`` for other backends and for an XLA without the option (probed once), so the result can be
    passed unconditionally. Numerics are unchanged (float32 convolutions either way; the parity tests run both).
    """
    if module is not None and not getattr(module, "CPU_EIGEN_CONVS", True):
        return {}
    if (backend or jax.default_backend()) != "cpu" or not _cpu_options_supported():
        return {}
    return dict(_CPU_EIGEN_CONV_OPTIONS)


def count_params(model: nn.Module, example_input_shape: tuple[int, ...]) -> int:
    """Number of entries torch would count as parameters (Flax ``params`` only; running stats excluded).

    Computed abstractly with ``jax.eval_shape`` (no memory, no FLOPs), so any depth is cheap.
    """
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(example_input_shape, jnp.float32))
    )
    return int(sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(abstract["params"])))
