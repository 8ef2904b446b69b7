"""HF/PyTorch <-> dlm_jax checkpoint conversion: one table per family, one engine walking it both ways."""
