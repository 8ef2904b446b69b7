"""The training loop: per-process data -> sharded donated step on a mesh -> metrics/eval -> orbax checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import pathlib
import signal
import threading
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from dlm_jax.data import pipeline
from dlm_jax.data.tokenizer import SimpleTokenizer, Tokenizer
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.parallel import MeshConfig, Partitioner, put_global, shard_batch, shard_eval_step, shard_train_step
from dlm_jax.parallel.distributed import data_shard, is_primary
from dlm_jax.parallel.sharding import abstract_with_shardings
from dlm_jax.training.checkpoint import Checkpointer
from dlm_jax.training.config import ExperimentConfig, TrainConfig
from dlm_jax.training.init_model import check_context, merge_init_config
from dlm_jax.training.metrics_log import MetricsLog, plot_loss
from dlm_jax.training.optimizer import make_optimizer
from dlm_jax.training.scaling import apply_flops_budget
from dlm_jax.training.state import TrainState, create_train_state
from dlm_jax.training.step import make_eval_step, make_train_step

PyTree = Any


def fit_model_to_tokenizer(model: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    """The built-in tokenizer defines the vocabulary (and special ids); an HF tokenizer must fit the model."""
    if isinstance(tokenizer, SimpleTokenizer):
        return model.replace(
            vocab_size=tokenizer.vocab_size,
            mask_token_id=tokenizer.mask_id,
            pad_token_id=tokenizer.pad_id,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
        )
    if tokenizer.vocab_size > model.vocab_size:
        raise ValueError(
            f"data.tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size={model.vocab_size}; "
            "use a model whose embedding covers the tokenizer"
        )
    if model.mask_token_id is None and tokenizer.mask_id is not None:
        model = model.replace(mask_token_id=tokenizer.mask_id)
    return model


def objective_attention(model: ModelConfig, train: TrainConfig) -> ModelConfig:
    """The attention the objective trains: causal for AR, bidirectional for the diffusion objectives (DiffuLLaMA's
    annealing mask makes it causal at first, on top of the bidirectional mode); a diffusion objective needs a
    mask token."""
    model = model.replace(attention_mode="causal" if train.objective == "ar" else "bidirectional")
    if train.is_diffusion and model.mask_token_id is None:
        raise ValueError(f"train.objective={train.objective} needs a mask token, but neither the model nor "
                         f"data.tokenizer declares one; set model.mask_token_id=<id> (a token id of the model)")
    return model


def data_parallel_size(partitioner: Partitioner) -> tuple[int, tuple[str, ...]]:
    """How many ways the batch is split on `partitioner`'s mesh, and the mesh axes it is split over.

    Example:
        >>> data_parallel_size(Partitioner.create(MeshConfig(data=2, fsdp=2, tensor=2)))
        (4, ('data', 'fsdp'))
    """
    axes = dict(partitioner.rules).get("batch")
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(partitioner.mesh.shape[a] for a in names), names


def check_batch_fits_mesh(train: TrainConfig, partitioner: Partitioner) -> None:
    """One clear error (before anything compiles) when the global batch does not split over the mesh."""
    size, names = data_parallel_size(partitioner)
    if train.batch_size % size:
        mesh = ",".join(f"{a}={n}" for a, n in partitioner.mesh.shape.items())
        raise ValueError(
            f"train.batch_size={train.batch_size} is not divisible by the mesh's data-parallel size {size} "
            f"(the batch is split over {'*'.join(names)} of mesh {mesh}); use a multiple of {size} "
            f"or change the mesh section"
        )


def global_spec(local_batch: dict[str, np.ndarray], batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract global batch (`batch_size` rows) shaped like one process's batch."""
    return {k: jax.ShapeDtypeStruct((batch_size, *np.shape(v)[1:]), np.asarray(v).dtype)
            for k, v in local_batch.items()}


def allgather_json(obj: Any) -> list[Any]:
    """`obj` (JSON-serialisable) from every process, in process order; `[obj]` with one process."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes, strict=True)]


def pick_data_state(saved: dict[str, Any], shard: tuple[int, int]) -> dict[str, Any]:
    """This data shard's iterator state from a checkpoint's `{"shard_count", "shards"}` record.

    Unpacked data has one state for all shards, so it resumes on any process count; packed
    streams are per shard and need the same count.
    """
    index, count = shard
    if "shards" not in saved:
        raise ValueError("the checkpoint's data-iterator state predates per-process data shards; "
                         "set checkpoint.resume=false or point checkpoint.dir elsewhere")
    shards = saved["shards"]
    if saved["shard_count"] == count:
        return shards[str(index)]
    if len({json.dumps(s, sort_keys=True) for s in shards.values()}) == 1:
        return next(iter(shards.values()))
    raise ValueError(
        f"the checkpoint's packed data stream was read as {saved['shard_count']} data shards (processes) but this "
        f"run has {count}; resume with the same number of processes or set checkpoint.resume=false"
    )


@dataclasses.dataclass
class TrainResult:
    """What a run leaves behind: final state, its config and tokenizer, and the logged history."""

    state: TrainState
    model_config: ModelConfig
    tokenizer: Tokenizer
    history: list[dict[str, Any]]
    out_dir: pathlib.Path
    interrupted: bool = False

    @property
    def final_val(self) -> float | None:
        vals = [r["val_elbo"] for r in self.history if "val_elbo" in r]
        return vals[-1] if vals else None


class Trainer:
    """Builds everything an `ExperimentConfig` describes and runs it on a device mesh.

    The experiment's `mesh` section (data/fsdp/tensor/rules; default fsdp over all devices, or
    over `devices` when given) shards params, optimiser state and batches. The initial weights
    and the loss curve do not depend on the mesh. With several processes (after
    `jax.distributed.initialize`) every process builds the same `Trainer` and calls `run`: each
    reads its own rows of the global batch; process 0 logs and writes the metrics; checkpoints
    and the export are collective.

    Example:
        >>> from dlm_jax.training.config import load_experiment
        >>> exp = load_experiment("configs/experiments/tiny_mdm.yaml",
        ...                       ["train.max_steps=4", "train.log_every=2", "train.batch_size=8"])
        >>> result = Trainer(exp, progress=False).run()
        >>> [row["step"] for row in result.history], "val_elbo" in result.history[-1]
        ([2, 4], True)
        >>> sorted(path.name for path in result.out_dir.iterdir())  # runs/tiny_mdm
        ['checkpoints', 'loss.png', 'metrics.jsonl', 'model', 'summary.json']
    """

    def __init__(self, exp: ExperimentConfig, *, progress: bool | None = None, devices: list | None = None):
        self.exp = exp
        self.out_dir = pathlib.Path(exp.logging.out_dir)
        self.progress = exp.logging.progress if progress is None else progress
        train_records, val_records = self._read_records()
        init_params = self._resolve_config(itertools.chain(train_records, val_records))  # streamed, never held
        first, local_val = self._build_data(train_records, val_records, devices)
        abstract_state = self._build_state(first, init_params)
        self._build_eval(abstract_state, local_val)
        self._restore(abstract_state, init_params)
        self._stop = threading.Event()

    # ---- construction, in order -------------------------------------------------------------
    def _read_records(self) -> tuple[Any, Any]:
        """The train and validation records of the data section (validation must exist when evals are asked for)."""
        data, train = self.exp.data, self.exp.train
        train_records = pipeline.load_records(data, "train")
        val_records = pipeline.load_records(data, "val")
        if train.eval_every and not len(val_records):
            raise ValueError(f"train.eval_every={train.eval_every} needs validation data, but the "
                             f"{data.kind} data has no validation split (set data.val_path, or data.val_examples "
                             f"> 0 for a built-in task), or set train.eval_every=0")
        return train_records, val_records

    def _resolve_config(self, records: Iterable[dict[str, Any]]) -> PyTree | None:
        """Set the tokenizer, the model config (fitted to the tokenizer and the objective) and the train config.

        Returns the initial params of `checkpoint.init_from` (host arrays), or None for a fresh start.
        """
        exp, init_from = self.exp, self.exp.checkpoint.init_from
        model, init_params = exp.model, None
        if init_from:
            from dlm_jax.api import DiffusionLM

            loaded = DiffusionLM.from_pretrained(init_from, dtype=exp.model.param_dtype)
            model = merge_init_config(loaded.config, exp.model, exp.model_explicit, init_from)
            init_params = jax.device_get(loaded.params)
        self.tokenizer = pipeline.build_tokenizer(exp.data, records, model.mask_token_id)
        model = fit_model_to_tokenizer(model, self.tokenizer)
        if init_params is not None and model.vocab_size != loaded.config.vocab_size:
            raise ValueError(f"checkpoint.init_from={init_from} has vocab_size={loaded.config.vocab_size} but the "
                             f"built-in tokenizer has {model.vocab_size} tokens; set data.tokenizer to the "
                             f"checkpoint's tokenizer folder")
        self.model_config = objective_attention(model, exp.train)
        self.train_config = apply_flops_budget(exp.train, self.model_config)
        check_context(self.model_config, self.train_config.seq_len, init_from)
        return init_params

    def _build_data(self, train_records: Any, val_records: Any, devices: list | None) -> tuple[dict, list[dict]]:
        """The mesh, this process's data shard and training stream; returns its first batch and validation batches."""
        tc = self.train_config
        # The mesh (default: fsdp over every device) and a batch check, before anything compiles.
        self.partitioner = Partitioner.create(MeshConfig.from_dict(self.exp.mesh), devices)
        check_batch_fits_mesh(tc, self.partitioner)
        ids_spec = jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len), np.int32)
        ids_sharding = self.partitioner.batch_shardings({"input_ids": ids_spec})["input_ids"]
        self.data_shard = data_shard(ids_sharding, tc.batch_size)
        self.train_ds = pipeline.make_dataset(train_records, self.exp.data, tc, self.tokenizer, split="train",
                                              shard=self.data_shard)
        first = next(iter(self.train_ds))
        return first, self._local_val_batches(val_records, first)

    def _new_state(self, params: PyTree, seed: int) -> TrainState:
        return create_train_state(params, self.optimizer, jax.random.fold_in(jax.random.key(seed), 1))

    def _fresh_state(self, seed: int) -> TrainState:
        return self._new_state(decoder.init(jax.random.fold_in(jax.random.key(seed), 0), self.model_config), seed)

    def _build_state(self, first: dict[str, np.ndarray], init_params: PyTree | None) -> TrainState:
        """The optimiser and the sharded train step; returns the abstract train state it was built for."""
        tc = self.train_config
        self.optimizer = make_optimizer(tc)
        if init_params is None:
            abstract_state = jax.eval_shape(self._fresh_state, tc.seed)
        else:
            abstract_state = jax.eval_shape(lambda p: self._new_state(p, tc.seed), init_params)
        self.sharded_step = shard_train_step(make_train_step(self.model_config, tc, self.optimizer), abstract_state,
                                             global_spec(first, tc.batch_size), self.model_config, self.partitioner)
        self.step_fn = self.sharded_step
        return abstract_state

    def _build_eval(self, abstract_state: TrainState, local_val: list[dict[str, np.ndarray]]) -> None:
        """The sharded eval step, the validation batches on the mesh, their keys and scored-token weights."""
        tc = self.train_config
        self.val_data, self.eval_keys, self.val_weights = [], [], []
        if not local_val:
            return
        eval_step = make_eval_step(self.model_config, tc)
        self.eval_fn, _, val_shardings = shard_eval_step(
            lambda params, batch, key_data: eval_step(params, batch, jax.random.wrap_key_data(key_data)),
            abstract_state.params, global_spec(local_val[0], tc.batch_size), self.model_config, self.partitioner,
            num_replicated_args=1,
        )
        eval_key = jax.random.fold_in(jax.random.key(tc.seed), 2)
        self.eval_keys = [np.asarray(jax.random.key_data(jax.random.fold_in(eval_key, i)))
                          for i in range(len(local_val))]
        self.val_data = [shard_batch(b, val_shardings, tc.batch_size) for b in local_val]
        counts = allgather_json([pipeline.scored_tokens(b) for b in local_val])
        self.val_weights = [sum(c) for c in zip(*counts, strict=True)]

    def _restore(self, abstract_state: TrainState, init_params: PyTree | None) -> None:
        """The checkpointer and the state: the latest checkpoint (and data position) if resuming, else a new one."""
        ck, seed = self.exp.checkpoint, self.train_config.seed
        self.ckpt = Checkpointer(ck.dir or self.out_dir / "checkpoints", keep=ck.keep, every=ck.every,
                                 async_save=ck.async_save)
        self.train_iter = iter(self.train_ds)
        self.resumed_from: int | None = None  # the checkpoint step this run continues from
        if ck.resume and self.ckpt.latest_step() is not None:
            template = abstract_with_shardings(abstract_state, self.sharded_step.state_shardings)
            self.state, saved = self.ckpt.restore(template, model_config=self.model_config)
            pipeline.restore_state(self.train_iter, pick_data_state(saved, self.data_shard))
            self.resumed_from = int(jax.device_get(self.state.step))
        elif init_params is None:
            self.state = self.sharded_step.init_state(self._fresh_state, seed)  # born sharded, same on any mesh
        else:
            placed = put_global(init_params, self.sharded_step.param_shardings)
            self.state = self.sharded_step.init_state(lambda p: self._new_state(p, seed), placed)

    # ---- pieces -----------------------------------------------------------------------------
    def _local_val_batches(self, records: Any, template: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """This process's validation batches, as many on every process (a shard short of batches adds unscored ones)."""
        tc, rows = self.train_config, pipeline.shard_rows(self.train_config, self.data_shard)
        local = []
        if len(records):
            ds = pipeline.make_dataset(records, self.exp.data, tc, self.tokenizer, split="val", shard=self.data_shard)
            local = pipeline.val_batches(ds, tc.eval_batches, rows)
        missing = max(allgather_json(len(local))) - len(local)
        if missing:
            local += [pipeline.unscored(local[0] if local else pipeline.fill_rows(template, rows))] * missing
        return local

    def evaluate(self, params: Any) -> float | None:
        """Validation ELBO per scored token (exact NLL for AR) over the fixed validation batches; None without any."""
        if not self.val_data:
            return None
        pairs = zip(self.val_data, self.eval_keys, strict=True)
        vals = [float(self.eval_fn(params, batch, key)["val_elbo"]) for batch, key in pairs]
        return float(np.average(vals, weights=self.val_weights))

    def meta(self) -> dict[str, Any]:
        return {"model": self.model_config.to_dict(), "train": dataclasses.asdict(self.train_config),
                "mesh": dict(self.partitioner.mesh.shape), "processes": jax.process_count()}

    def data_state(self) -> dict[str, Any]:
        """Every data shard's iterator state (gathered from all processes: call on all of them)."""
        states = allgather_json([self.data_shard[0], self.train_iter.get_state()])
        return {"shard_count": self.data_shard[1], "shards": {str(i): st for i, st in states}}

    def save(self, force: bool = False) -> bool:
        """Checkpoint collectively: every process calls this; orbax writes each array shard once."""
        return self.ckpt.save(self.state, data_state=self.data_state(), meta=self.meta(), force=force)

    def _on_sigterm(self, signum, frame) -> None:
        self._stop.set()

    def _should_stop(self, sync: bool) -> bool:
        """The SIGTERM flag; with several processes agreed on (any process) at sync steps only."""
        if jax.process_count() == 1:
            return self._stop.is_set()
        return sync and bool(np.any(multihost_utils.process_allgather(np.array(self._stop.is_set()))))

    # ---- the loop ---------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True when the restored checkpoint is already at (or past) `max_steps`: `run` has nothing to train."""
        return self.resumed_from is not None and self.resumed_from >= self.train_config.max_steps

    def run(self) -> TrainResult:
        """Train to `max_steps` (or until SIGTERM, which checkpoints and returns), then evaluate and save.

        A run whose checkpoint is already finished trains and logs nothing (it only exports the
        model folder if that is missing). On process 0 the loss curve is drawn into `loss.png`.
        """
        tc = self.train_config
        if self.finished:
            missing = allgather_json(not (self.out_dir / "model").is_dir())[0]
            if missing and self.exp.checkpoint.export:
                self._export()
            return TrainResult(self.state, self.model_config, self.tokenizer, [], self.out_dir)
        start = int(jax.device_get(self.state.step))
        log = None
        if is_primary():
            log = MetricsLog(
                self.out_dir,
                total_steps=tc.max_steps,
                tokens_per_step=tc.batch_size * tc.seq_len,
                start_step=start,
                progress=self.progress,
                wandb_mode=self.exp.logging.wandb_mode,
                wandb_project=self.exp.logging.wandb_project,
                config=self.exp.to_dict(),
            )
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        history: list[dict[str, Any]] = []
        interrupted = False
        pending = None  # (step, metrics) of a logged step, read back once the next step is queued

        def write(step: int, metrics: Any, evaluate: bool = False) -> None:
            record: dict[str, Any] = {}
            if metrics is not None:
                record = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"loss is {record['loss']} at step {step}; stopping (no checkpoint)")
            val = self.evaluate(self.state.params) if evaluate else None
            if val is not None:
                record["val_elbo"] = val
            if record:
                record = {"step": step, **record}
                history.append(record)
                if log is not None:
                    log.write(record)

        try:
            for step in range(start + 1, tc.max_steps + 1):
                batch = self.sharded_step.shard_batch(next(self.train_iter), global_batch_size=tc.batch_size)
                self.state, metrics = self.step_fn(self.state, batch)
                if pending is not None:  # the previous step's numbers, read while this step runs
                    write(*pending)
                    pending = None
                logged = step % tc.log_every == 0 or step == tc.max_steps
                evaluated = (tc.eval_every and step % tc.eval_every == 0) or step == tc.max_steps
                saving = self.ckpt.should_save(step)
                if logged and not (evaluated or saving):
                    pending = (step, metrics)  # reading it now would idle the device while the next batch is made
                elif logged or evaluated:
                    write(step, metrics if logged else None, evaluate=bool(evaluated))
                if saving:
                    self.save()
                if self._should_stop(logged or saving):
                    interrupted = True
                    break
            if pending is not None:
                write(*pending)
            if self.exp.checkpoint.every > 0 or self.exp.checkpoint.dir or interrupted:
                self.save(force=True)
            self.ckpt.wait()
        finally:
            if log is not None:
                log.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if is_primary():
            plot_loss(self.out_dir / "metrics.jsonl")
        if not interrupted and self.exp.checkpoint.export:
            self._export()
        return TrainResult(self.state, self.model_config, self.tokenizer, history, self.out_dir, interrupted)

    def _export(self) -> None:
        """Final model as a native dlm_jax folder that `generate`, `chat` and `eval` open on their own.

        Beside the weights: the tokenizer as HF files (the built-in word/char one too) and
        `dlm_jax_training.json`, the data/task settings of this run (`eval`'s task defaults).
        Collective: process 0 makes the temporary folder, every process joins orbax's save of the
        sharded parameters (each writes only the shards it holds; nothing is gathered), and process 0
        renames the folder into place once the save completed. Stored as whole arrays, so it loads on
        any device layout.
        """
        from dlm_jax import checkpoint_io
        from dlm_jax.data.training_record import write_training_record
        from dlm_jax.output_dir import atomic_output_dir

        with contextlib.ExitStack() as stack:
            tmp = None
            if is_primary():
                tmp = stack.enter_context(atomic_output_dir(self.out_dir / "model", overwrite=True))
            tmp = pathlib.Path(allgather_json(str(tmp))[0])
            checkpoint_io.save_native(tmp, self.model_config, self.state.params, None)
            if is_primary():
                self.tokenizer.save_pretrained(tmp)
                write_training_record(tmp, data=dataclasses.asdict(self.exp.data), seq_len=self.train_config.seq_len,
                                      objective=self.train_config.objective,
                                      steps=int(jax.device_get(self.state.step)))
        if is_primary():
            (self.out_dir / "summary.json").write_text(json.dumps(
                {"steps": int(jax.device_get(self.state.step)), "model": self.model_config.to_dict(),
                 "train": dataclasses.asdict(self.train_config)}, indent=1))

    def close(self) -> None:
        self.ckpt.close()
