"""Registry of per-family converters from foreign state dicts to Flax variables.

Each backbone family registers, from its own ``weights/convert_<family>.py`` module:
  * ``convert(src: SourceTensors, model_name: str) -> {flax_path: ndarray}``: reads tensors by their
    original key names through ``src`` (so unused tensors are detected) and returns flat Flax paths
    ("params/...", "batch_stats/...");
  * ``detect(shapes: {key: shape}) -> model_name | None``: recognises a state dict of this family and
    returns the exact registry name (depth included), or None.

``load_state_dict_into(model_name, tensors)`` runs the converter, checks that every source tensor was used
and that the result matches the model's variable shapes exactly.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Mapping

import numpy as np

from synleak_jax.weights.mapping import SourceTensors, WeightMappingError, assign_variables

_CONVERTER_MODULES = (
    "synleak_jax.weights.convert_arcface",     # iresnet*, adaface_ir*, mobilefacenet
    "synleak_jax.weights.convert_dlib",        # dlib_resnet_v1 (.dat files; no state dict)
    "synleak_jax.weights.convert_facenet",     # facenet_inception_resnet_v1
    "synleak_jax.weights.convert_sphereface",  # sphereface20
)


@dataclasses.dataclass(frozen=True)
class Converter:
    family: str
    convert: Callable[[SourceTensors, str], dict[str, np.ndarray]]
    detect: Callable[[Mapping[str, tuple[int, ...]]], str | None]


_CONVERTERS: dict[str, Converter] = {}
_LOADED = False


def register_converter(family: str, convert, detect) -> None:
    _CONVERTERS[family] = Converter(family, convert, detect)


def _load() -> None:
    global _LOADED
    if not _LOADED:
        for mod in _CONVERTER_MODULES:
            importlib.import_module(mod)
        _LOADED = True


def converter_for_family(family: str) -> Converter:
    _load()
    if family not in _CONVERTERS:
        raise KeyError(f"no weight converter for model family {family!r}; have {sorted(_CONVERTERS)}")
    return _CONVERTERS[family]


def detect_model_name(shapes: Mapping[str, tuple[int, ...]], source: str = "<weights>") -> str:
    """Guesses the registry model name from a state dict's key names and shapes."""
    _load()
    hits = {c.family: name for c in _CONVERTERS.values() if (name := c.detect(shapes))}
    if len(hits) != 1:
        what = "no known backbone layout" if not hits else f"several layouts {hits}"
        raise WeightMappingError(f"{source}: cannot infer the model from the weights ({what}); pass model_name")
    return next(iter(hits.values()))


def model_variable_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    """Flat ``{"params/...": shape}`` of registry model ``model_name``'s variables (abstract init, no FLOPs)."""
    from synleak_jax.models import registry
    from synleak_jax.weights.mapping import variable_shapes

    entry = registry.get_entry(model_name)
    spec = entry.spec
    example = np.zeros((1, spec.height, spec.width, 3), np.float32)
    return variable_shapes(entry.factory(), example)


def load_state_dict_into(model_name: str, tensors: Mapping[str, np.ndarray], source: str = "<weights>") -> dict:
    """Converts a flat state dict into checked Flax variables for registry model ``model_name``."""
    from synleak_jax.models import registry

    entry = registry.get_entry(model_name)
    src = SourceTensors(tensors, source)
    flat = converter_for_family(entry.family).convert(src, model_name)
    src.check_all_used()
    return assign_variables(model_variable_shapes(model_name), flat, source)
