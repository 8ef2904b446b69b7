"""`DiffusionLM`: the user-facing handle that bundles a config with its parameters."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import checkpoint_io
from dlm_jax.checkpoint_io.leaves import materialize
from dlm_jax.conversion.engine import NP_DTYPES, export_hf, open_model
from dlm_jax.conversion.side_files import copy_side_files
from dlm_jax.models import decoder
from dlm_jax.models.config import RUNTIME_FIELDS, ModelConfig
from dlm_jax.output_dir import atomic_output_dir
from dlm_jax.parallel.api import Partitioner
from dlm_jax.parallel.inference import MeshLike, MeshRunner, as_partitioner
from dlm_jax.sampling import frontend
from dlm_jax.sampling.config import GenerateConfig
from dlm_jax.sampling.results import GenerationResult


def model_folder(path: str | pathlib.Path) -> pathlib.Path:
    """`path` as a folder, or `FileNotFoundError("model folder X does not exist")` (every command's wording)."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"model folder {folder} {what}")
    return folder


class DiffusionLM:
    """A diffusion LM: `config` (ModelConfig) plus `params` (a pytree of arrays).

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> m = DiffusionLM.init(cfg, seed=0)
        >>> m.logits(np.array([[1, 2, 3]])).shape
        (1, 3, 64)
        >>> str(m.save_pretrained("tiny_hf", format="hf"))
        'tiny_hf'
        >>> DiffusionLM.from_pretrained("tiny_hf").config.hidden_size
        32

        A released model loads the same way from the local folder it was downloaded to:

        >>> m = DiffusionLM.from_pretrained("Dream-v0-Base-7B", dtype="bfloat16")  # doctest: +SKIP

        On a device mesh (the training rules table places the params; tokens are those of one device):

        >>> m = DiffusionLM.from_pretrained("tiny_hf", mesh="fsdp=4,tensor=2")  # 8 devices
        >>> tuple(m.params["layers"]["mlp"]["up"]["kernel"].sharding.spec), dict(m.mesh.shape)
        ((None, 'fsdp', 'tensor'), {'data': 1, 'fsdp': 4, 'tensor': 2})
    """

    def __init__(
        self,
        config: ModelConfig,
        params: dict,
        *,
        hf_config: dict[str, Any] | None = None,
        source_dir: pathlib.Path | None = None,
        runner: MeshRunner | None = None,
    ):
        self.config = config
        self.params = params
        self.hf_config = hf_config
        self.source_dir = source_dir
        self.runner = runner
        self._logits_fn = jax.jit(_logits, static_argnames="config")

    @property
    def mesh(self) -> jax.sharding.Mesh | None:
        """The device mesh the params live on (None: one device)."""
        return None if self.runner is None else self.runner.partitioner.mesh

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` for a jitted function of the params (sampler, likelihood kernels).

        On one device a plain call; on a mesh jitted with the sharding rules active, array arguments traced
        and the rest static, and outputs replicated (readable in every process; see `parallel.inference`).
        """
        return fn(*args, **kwargs) if self.runner is None else self.runner(fn, *args, **kwargs)

    @classmethod
    def init(cls, config: ModelConfig, seed: int = 0, mesh: MeshLike | None = None) -> DiffusionLM:
        """A randomly initialised model (for training from scratch and tests); with `mesh`, born sharded
        (jitted: the values of a jitted init on one device, within an ulp of this eager one)."""
        if mesh is None:
            return cls(config, decoder.init(jax.random.key(seed), config))
        part = as_partitioner(mesh)
        shardings = part.param_shardings(jax.eval_shape(lambda: decoder.init(jax.random.key(seed), config)), config)
        params = jax.jit(lambda key: decoder.init(key, config), out_shardings=shardings)(jax.random.key(seed))
        return cls(config, params, runner=MeshRunner(part))

    @classmethod
    def from_pretrained(
        cls, path: str | pathlib.Path, dtype: str | None = "float32", mesh: MeshLike | None = None, **overrides: Any
    ) -> DiffusionLM:
        """Load an HF folder (Dream/Qwen2, LLaMA, GPT-2) or a `dlm_jax` checkpoint folder.

        `dtype=None` keeps the dtype the checkpoint is stored in. `overrides` change runtime fields
        only (e.g. `attention_impl="pallas"`, `logit_shift=False`, `mask_token_id=...`); shape fields
        raise an error. The folder is remembered (`source_dir`) so `save_pretrained` carries its
        tokenizer and generation config along.

        Weights are read layer by layer and converted to `dtype` as they are read; each parameter
        is assembled once, so peak host memory is the parameters plus one block (on CPU the
        assembled arrays are used in place).

        `mesh` (`"fsdp=4,tensor=2"`, a `parallel.MeshConfig` or a `parallel.Partitioner`) places the params
        on a device mesh by the training rules table; each process reads only the rows of its own shards.
        Sampling, likelihoods and logits then run on that mesh, batch rows split over data x fsdp.
        """
        folder = model_folder(path)
        if dtype is not None and dtype not in NP_DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(NP_DTYPES)}")
        bad = sorted(set(overrides) - RUNTIME_FIELDS)
        if bad:
            raise ValueError(f"override(s) {bad} are not runtime fields; allowed: {sorted(RUNTIME_FIELDS)}")
        part = None if mesh is None else as_partitioner(mesh)
        config, leaves, hf_config = open_model(folder, dtype, **overrides)
        if part is None:
            return cls(config, materialize(leaves), hf_config=hf_config, source_dir=folder)
        shardings = _leaf_shardings(leaves, config, part)
        return cls(config, materialize(leaves, shardings), hf_config=hf_config, source_dir=folder,
                   runner=MeshRunner(part))

    def save_pretrained(
        self, out_dir: str | pathlib.Path, format: str = "dlm_jax", overwrite: bool = False
    ) -> pathlib.Path:
        """Save as an HF folder (`format="hf"`) or the native Orbax format (`"dlm_jax"`).

        The folder appears only when the save completed (written to a temp dir, then renamed), with
        the source folder's tokenizer and generation config. Weights keep `config.param_dtype`.
        The source folder itself is refused, and `overwrite` replaces only a folder dlm-jax wrote.
        """
        if format == "hf":
            return export_hf(
                self.params,
                self.config,
                out_dir,
                hf_config=self.hf_config,
                source_dir=self.source_dir,
                overwrite=overwrite,
            )
        if format != "dlm_jax":
            raise ValueError(f"format={format!r} is not one of ('hf', 'dlm_jax')")
        with atomic_output_dir(out_dir, overwrite=overwrite, source=self.source_dir) as tmp:
            checkpoint_io.save_native(tmp, self.config, self.params, self.hf_config)
            copy_side_files(self.source_dir, tmp, self.hf_config)
        return pathlib.Path(out_dir)

    def logits(self, input_ids: Any, attention_mask: Any | None = None) -> np.ndarray:
        """Raw (unshifted) float32 logits [B, L, V] as numpy."""
        ids = jnp.asarray(frontend.check_token_ids(input_ids, self.config.vocab_size), jnp.int32)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
        mask = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids shape {ids.shape}")
        return np.asarray(self.call(self._logits_fn, self.params, ids, mask, config=self.config))

    def diffusion_generate(
        self, input_ids: Any, attention_mask: Any | None = None, gen: GenerateConfig | None = None, **overrides: Any
    ) -> GenerationResult:
        """Masked-diffusion generation, the whole reverse process in one compiled loop.

        Three call forms (`dlm_jax.sampling.GenerateConfig` lists and documents every knob):
          - Dream: `alg="origin"|"maskgit_plus"|"topk_margin"|"entropy"` with `temperature`, `top_p`,
            `top_k` (unset = 50, Dream's effective default; None = off), `alg_temp`, `eps`.
          - LLaDA/SMDM: `remasking="low_confidence"|"random"`, `block_length`, `cfg_scale`.
          - DiffuLLaMA: `alg="diffullama"`, `src_mask` (never-masked positions), `logits_temp`.
          - Block-wise fast decoding (Dream and LLaDA algs): `block_length` with `threshold` | `factor` |
            `entropy_budget`, `cache="prefix"|"dual"`, `cache_refresh`, `suffix_window`, `early_exit`.
        `input_ids` [B, P] left-padded with `attention_mask` [B, P]; the canvas is the prompt plus
        `max_new_tokens` masks. `overrides`: any `GenerateConfig` field by name (`max_new_tokens`,
        `steps`, `alg`, ..., `per_row_count`, `forbid_mask_token`, `vocab_limit`, `suppress_tokens`, hooks
        `(step, x, logits)`), the aliases `remasking`, `suppress_eos`, `generation_tokens_hook_func`,
        `generation_logits_hook_func`, and the call options `seed` (0), `src_mask`, `tokenizer`, `until`
        (texts cut at stop strings). An unknown keyword raises a TypeError naming it and the closest names.
        `gen`: a ready `GenerateConfig`, used as it is (its own defaults, e.g. `top_k=None`) with `overrides`
        replacing its fields. Compiled samplers are cached per configuration, so repeated calls do not recompile.

        Example:
            >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
            ...                   intermediate_size=64, mask_token_id=63)
            >>> m = DiffusionLM.init(cfg)
            >>> out = m.diffusion_generate(np.array([[1, 2, 3]]), max_new_tokens=8, steps=8, alg="entropy")
            >>> out.sequences.shape, out.nfe.tolist(), out.sequences[0, :3].tolist()
            ((1, 11), [8], [1, 2, 3])
            >>> m.diffusion_generate(np.array([[1, 2, 3]]), max_new_tokens=8, stepz=8)
            Traceback (most recent call last):
            TypeError: unknown diffusion_generate keyword 'stepz' (did you mean steps?)
        """
        gen, options = frontend.prepare_call(self.config, gen, overrides)
        return frontend.run(self.params, self.config, input_ids, attention_mask, gen, call=self.call, **options)


def _logits(params: dict, ids: jax.Array, mask: jax.Array | None, config: ModelConfig) -> jax.Array:
    return decoder.apply(params, ids, mask, config=config)


def _leaf_shardings(leaves: dict, config: ModelConfig, part: Partitioner) -> dict:
    """path -> `NamedSharding` of each parameter leaf, by the training rules table (divisibility checked)."""
    abstract: dict = {}
    for path, leaf in leaves.items():
        node = abstract
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
    tree = part.param_shardings(abstract, config)
    out = {}
    for path in leaves:
        node = tree
        for key in path:
            node = node[key]
        out[path] = node
    return out
