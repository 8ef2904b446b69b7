"""dlm-jax: masked diffusion language models in JAX."""

from dlm_jax.api import DiffusionLM
from dlm_jax.models.config import ModelConfig

__version__ = "0.1.0"
__all__ = ["DiffusionLM", "ModelConfig", "__version__"]
