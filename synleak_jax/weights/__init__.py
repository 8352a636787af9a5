"""synleak_jax.weights: readers for foreign weight files, per-model mapping, orbax save/restore.

Public entry points (imported lazily, so ``import synleak_jax.weights.torch_pickle`` stays cheap):
``load_weights``, ``WeightsInfo``, ``load_torch_file``, ``read_torch_pickle``, ``save_variables``,
``restore_variables``.
"""

import importlib

_EXPORTS = {
    "load_weights": "synleak_jax.weights.loader",
    "WeightsInfo": "synleak_jax.weights.loader",
    "detect_format": "synleak_jax.weights.loader",
    "load_torch_file": "synleak_jax.weights.torch_pickle",
    "read_torch_pickle": "synleak_jax.weights.torch_pickle",
    "save_variables": "synleak_jax.weights.orbax_io",
    "restore_variables": "synleak_jax.weights.orbax_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'synleak_jax.weights' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
