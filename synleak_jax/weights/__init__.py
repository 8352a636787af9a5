"""synleak_jax.weights."""
