"""Orbax checkpoints of the whole training state plus the grain iterator state; atomic, async, shape-checked."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dlm_jax.models.config import RUNTIME_FIELDS, ModelConfig
from dlm_jax.training.state import TrainState


def _shape_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}


def state_is_finite(state: TrainState) -> bool:
    """False when any parameter or optimiser moment is NaN/inf (such a state is never saved)."""
    leaves = [x for x in jax.tree.leaves((state.params, state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    return bool(all(np.isfinite(np.asarray(jax.device_get(jnp.sum(x)))) for x in leaves))


class Checkpointer:
    """Saves/restores `TrainState` + data-iterator state + run metadata under `directory/<step>/`.

    Orbax writes each step into a temporary folder and renames it when complete, so a save
    killed half-way leaves the previous checkpoint as the latest usable one. A step that
    already exists is never rewritten, and a state with non-finite values is never saved.

    Example:
        >>> from dlm_jax.models import decoder
        >>> from dlm_jax.training.config import TrainConfig
        >>> from dlm_jax.training.optimizer import make_optimizer
        >>> from dlm_jax.training.state import create_train_state
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> state = create_train_state(decoder.init(jax.random.key(0), cfg), make_optimizer(TrainConfig()), 0)
        >>> ckpt = Checkpointer("runs/x/ckpt", keep=3, every=100)
        >>> ckpt.save(state, data_state={"next_index": 8}, meta={"model": cfg.to_dict()})
        True
        >>> ckpt.wait(); ckpt.latest_step()
        0
        >>> restored, data_state = ckpt.restore(state, model_config=cfg)
        >>> int(restored.step), data_state
        (0, {'next_index': 8})
        >>> ckpt.restore(state, model_config=cfg.replace(num_layers=3))
        Traceback (most recent call last):
        ValueError: checkpoint .../runs/x/ckpt/0 was written for another model shape (num_layers: checkpoint 2 vs ...
        >>> ckpt.close()
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, every: int = 0, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=max(every, 1),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.every = every
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state: TrainState, *, data_state: dict[str, Any], meta: dict[str, Any], force: bool = False) -> bool:
        """Start an (async) save of `state` at its step; returns False when nothing was written."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        if not state_is_finite(state):
            raise FloatingPointError(
                f"refusing to checkpoint step {step}: parameters or optimiser state contain NaN/inf "
                f"(the last good checkpoint, step {self.latest_step()}, is kept)"
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        return bool(self.manager.save(step, args=args, force=force))

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(
        self, template: TrainState, *, model_config: ModelConfig, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restore into arrays shaped (and sharded) like `template`; errors clearly on another model's checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint to resume from")
        meta = self.read_meta(step)
        saved, current = _shape_fields(meta.get("model", {})), _shape_fields(model_config.to_dict())
        diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(
                f"checkpoint {self.directory}/{step} was written for another model shape ({detail}); "
                f"point checkpoint.dir elsewhere or set checkpoint.resume=false"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
