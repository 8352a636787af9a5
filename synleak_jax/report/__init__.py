"""synleak_jax.report."""
