"""synleak_jax: identity-leakage audits of synthetic face-recognition datasets in JAX/Flax."""

__version__ = "0.1.0"
