"""synleak_jax.search."""
