"""cxr_jax."""
