"""Experiments built on the library: the reverse-curse demo (`dlm-jax demo`) and the scaling sweep (`dlm-jax sweep`)."""
