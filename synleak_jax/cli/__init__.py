"""synleak_jax.cli."""
