"""Checked mapping of foreign tensors into Flax variable pytrees.

A converter for a model family reads source tensors through a :class:`SourceTensors` (which records every
key it hands out) and produces a flat dict ``{"params/conv1/kernel": array, "batch_stats/bn1/mean": ...}``.
:func:`assign_variables` then checks that dict against the model's own variable shapes, and
:meth:`SourceTensors.check_all_used` guarantees no source tensor was silently dropped.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import numpy as np
from flax import traverse_util


class WeightMappingError(ValueError):
    """A weight file does not fit the model: names the key(s) and shapes involved."""


class SourceTensors:
    """A read-only view of a flat ``{name: ndarray}`` state dict that remembers which keys were used."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str = "<weights>"):
        self._tensors = dict(tensors)
        self._used: set[str] = set()
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def keys(self):
        return self._tensors.keys()

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Returns tensor ``key`` (marking it used); checks its shape when ``shape`` is given."""
        if key not in self._tensors:
            raise WeightMappingError(f"{self.source}: missing key {key!r} (expected by the model)")
        value = np.asarray(self._tensors[key])
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise WeightMappingError(
                f"{self.source}: key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(shape)}"
            )
        self._used.add(key)
        return value

    def skip(self, key: str) -> None:
        """Marks ``key`` as deliberately unused (e.g. BatchNorm's ``num_batches_tracked`` counter)."""
        if key in self._tensors:
            self._used.add(key)

    def skip_matching(self, suffixes: Iterable[str]) -> None:
        suffixes = tuple(suffixes)
        for key in self._tensors:
            if key.endswith(suffixes):
                self._used.add(key)

    def unused(self) -> list[str]:
        return sorted(set(self._tensors) - self._used)

    def check_all_used(self) -> None:
        """Raises if any source tensor was not consumed by the converter."""
        left = self.unused()
        if left:
            shown = ", ".join(f"{k!r} {tuple(np.shape(self._tensors[k]))}" for k in left[:10])
            more = f" (and {len(left) - 10} more)" if len(left) > 10 else ""
            raise WeightMappingError(f"{self.source}: unexpected keys not used by the model: {shown}{more}")


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """``{"params": {"a": {"b": x}}}`` -> ``{"params/a/b": x}``."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(variables)).items()}


def unflatten_variables(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def variable_shapes(model, *example_args, **kwargs) -> dict[str, tuple[int, ...]]:
    """Flat ``{path: shape}`` of ``model``'s variables, computed abstractly (no FLOPs, no memory)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_args, **kwargs))
    return {k: tuple(v.shape) for k, v in flatten_variables(abstract).items()}


def assign_variables(
    expected_shapes: Mapping[str, tuple[int, ...]],
    converted: Mapping[str, np.ndarray],
    source: str = "<weights>",
) -> dict[str, Any]:
    """Checks ``converted`` against ``expected_shapes`` and returns the nested float32 variable pytree.

    Raises:
      WeightMappingError: naming the first missing key, unexpected key or shape mismatch.
    """
    missing = sorted(set(expected_shapes) - set(converted))
    if missing:
        raise WeightMappingError(
            f"{source}: no tensor for model variable(s) {', '.join(repr(m) for m in missing[:10])}"
            + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
        )
    unexpected = sorted(set(converted) - set(expected_shapes))
    if unexpected:
        raise WeightMappingError(
            f"{source}: converted tensor(s) {', '.join(repr(u) for u in unexpected[:10])} have no model variable"
        )
    out = {}
    for key, shape in expected_shapes.items():
        value = np.asarray(converted[key], dtype=np.float32)
        if tuple(value.shape) != tuple(shape):
            raise WeightMappingError(
                f"{source}: {key!r} has shape {tuple(value.shape)} after conversion, the model expects {tuple(shape)}"
            )
        out[key] = value
    return unflatten_variables(out)


def conv_kernel_oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight [O, I, kh, kw] -> Flax kernel [kh, kw, I, O]."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def linear_oi_to_io(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight [out, in] -> Flax Dense kernel [in, out]."""
    return np.ascontiguousarray(np.transpose(w, (1, 0)))
