"""Registry of face-recognition backbones by name, each with its input spec.

Every backbone family lives in its own module (``iresnet.py``, ``adaface_ir.py``, ...) and registers its
names at import time with :func:`register`. The registry imports the family modules lazily, the first time
a name is looked up, so ``import synleak_jax`` stays cheap and grain workers re-importing it do no work.

Contract (see ARCHITECTURE.md): a backbone maps a float32 NHWC batch, already normalised as its
:class:`InputSpec` says, to raw (un-normalised) embeddings ``[N, embedding_dim]``. L2 normalisation and
flip-summing belong to ``synleak_jax.embed``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import flax.linen as nn
import numpy as np

# Family modules imported on first use. Each registers one or more names.
_FAMILY_MODULES = (
    "synleak_jax.models.iresnet",
    "synleak_jax.models.adaface_ir",
    "synleak_jax.models.mobilefacenet",
    "synleak_jax.models.dlib_resnet",
    "synleak_jax.models.facenet",
    "synleak_jax.models.sphereface",
)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a backbone expects to see and how its embeddings are compared.

    Attributes:
      height, width: input size in pixels (after alignment/resizing).
      channel_order: "RGB" or "BGR": order of the last axis of the input.
      mean, std: per-channel normalisation, in the model's channel order, applied to pixel values in
        [0, 255]: ``x = (pixel - mean) / std``.
      embedding_dim: length of the output embedding.
      metric: "cosine" (compare L2-normalised embeddings by inner product) or "euclidean" (distance between
        raw embeddings; dlib).
      alignment: name of the alignment template the model was trained with ("arcface112",
        "arcface112x96", "dlib150", "facenet160").
      threshold: the original implementation's same-person decision threshold in ``metric`` units, if it
        publishes one (dlib: Euclidean distance 0.6); None otherwise (calibrate with attack/).
    """

    height: int
    width: int
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    metric: str
    alignment: str
    threshold: float | None = None

    def __post_init__(self):
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be 'cosine' or 'euclidean', got {self.metric!r}")

    def normalize(self, rgb_uint8: np.ndarray) -> np.ndarray:
        """Maps RGB pixels ``[..., H, W, 3]`` (uint8 or float in [0, 255]) to the model's float32 input."""
        x = np.asarray(rgb_uint8, dtype=np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    spec: InputSpec
    family: str
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}
_LOADED = False


def register(name: str, spec: InputSpec, family: str, description: str = ""):
    """Decorator/function registering ``factory(**kwargs) -> nn.Module`` under ``name``."""

    def wrap(factory):
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, factory, spec, family, description)
        return factory

    return wrap


def _load_families() -> None:
    global _LOADED
    if _LOADED:
        return
    for mod in _FAMILY_MODULES:
        importlib.import_module(mod)
    _LOADED = True


def available() -> list[str]:
    """Sorted list of registered model names."""
    _load_families()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _load_families()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_model(name: str, **kwargs) -> nn.Module:
    """Returns the Flax module for ``name``; kwargs (e.g. ``dtype=jnp.bfloat16``) go to its factory."""
    return get_entry(name).factory(**kwargs)


def get_spec(name: str) -> InputSpec:
    """Returns the :class:`InputSpec` of ``name``."""
    return get_entry(name).spec
