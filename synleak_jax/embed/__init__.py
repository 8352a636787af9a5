"""synleak_jax.embed."""
