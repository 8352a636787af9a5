"""synleak_jax.attack."""
