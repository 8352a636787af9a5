"""synleak_jax.data."""
