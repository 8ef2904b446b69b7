from setuptools import find_packages, setup

setup(
    name="dlm-jax",
    version="0.1.0",
    description="Masked diffusion language models in JAX: Dream, DiffuLLaMA/DiffuGPT, SMDM, LLaDA",
    # The top-level configs/ folder (model, mesh and experiment presets) ships inside the package as
    # dlm_jax/configs, so a wheel installed anywhere finds its presets (dlm_jax/presets.py looks them up).
    packages=[*find_packages(include=["dlm_jax", "dlm_jax.*"]), "dlm_jax.configs"],
    package_dir={"dlm_jax.configs": "configs"},
    package_data={
        "dlm_jax.configs": ["models/*.yaml", "meshes/*.yaml", "experiments/*.yaml"],
        "dlm_jax.evaluation": ["data/dream_planning/*.jsonl", "data/dream_planning/README.md"],
        "dlm_jax.data": ["heldout_hashes.json"],
    },
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax",
        "orbax-checkpoint",
        "grain",
        "chex",
        "einops",
        "transformers>=4.46",
        "safetensors",
        "ml_dtypes",
        "numpy",
        "pyyaml",
        "rich",
        "tqdm",
        "matplotlib",
        "wandb",
        "tensorflow-datasets",
    ],
    extras_require={
        "test": [
            "torch==2.13.0",
            "pytest",
            "pytest-xdist",
            "ruff",
            "nbclient",
            "nbformat",
            "ipykernel",
            "lm-eval",
        ],
    },
    entry_points={"console_scripts": ["dlm-jax=dlm_jax.cli:main"]},
)
