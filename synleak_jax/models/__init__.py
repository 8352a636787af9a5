"""Face-recognition backbones in Flax (NHWC) and their registry."""

from synleak_jax.models.registry import InputSpec, available, get_entry, get_model, get_spec, register

__all__ = ["InputSpec", "available", "get_entry", "get_model", "get_spec", "register"]
