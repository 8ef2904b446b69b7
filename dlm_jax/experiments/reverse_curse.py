"""SMDM's reverse curse at toy scale: an MDM and an equal-size AR model learn forward facts, queried both ways.

The MDM is queried forward and as the reversed sentence by `dlm-jax eval`'s own `reverse_curse`
task (`dlm_jax.evaluation.tasks`), with LLaDA's low-confidence remasking; the name infill and the
AR model's greedy continuations are the demo's own queries. All are scored by the task's
`answer_matches`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.api import DiffusionLM
from dlm_jax.data.tasks import Fact, reverse_curse_facts
from dlm_jax.data.tokenizer import Tokenizer
from dlm_jax.data.training_record import TrainingRecord
from dlm_jax.evaluation import tasks
from dlm_jax.evaluation.estimator import Estimator
from dlm_jax.evaluation.scorers import answer_matches
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.training.config import ExperimentConfig, experiment_from_dict
from dlm_jax.training.trainer import Trainer, TrainResult

EVAL_DIRECTIONS = {"forward": "forward", "reverse": "reverse_sentence"}  # eval task's name -> the demo's


@dataclasses.dataclass
class QueryResult:
    """Every query of one (model, direction) pair: (query, expected answer, answer produced, correct)."""

    samples: list[tuple[str, str, str, bool]]

    @property
    def accuracy(self) -> float:
        return float(np.mean([ok for *_, ok in self.samples]))


def answer_part(text: str) -> str:
    """The words of `text` before its first full stop (the answer of a `... .` sentence).

    Example:
        >>> answer_part("the mayor of Orrin . Kalo")
        'the mayor of Orrin'
    """
    return " ".join(itertools.takewhile(lambda w: w != ".", text.split()))


@functools.partial(jax.jit, static_argnames=("config", "start"))
def ar_greedy_decode(params: Any, canvas: jax.Array, *, config: ModelConfig, start: int) -> jax.Array:
    """Greedy left-to-right decoding of an AR (causal) model: fill canvas[:, start:] one token at a time."""

    def body(i, x):
        logits = decoder.apply(params, x, config=config, causal=True)
        nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i - 1, axis=1, keepdims=False), axis=-1)
        return jax.lax.dynamic_update_index_in_dim(x, nxt.astype(x.dtype), i, axis=1)

    return jax.lax.fori_loop(start, canvas.shape[1], body, canvas)


def _until_eos(tok: Tokenizer, ids: np.ndarray) -> str:
    ids = ids.tolist()
    return tok.decode(ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids)


def query_ar(result: TrainResult, facts: list[Fact], direction: str, seq_len: int) -> QueryResult:
    """AR queries: greedy continuation of `NAME is` (forward) or `DESCRIPTION is` (reverse_sentence)."""
    tok = result.tokenizer
    forward = direction == "forward"
    prompts = [tok.encode(f"{f.name} is" if forward else f"{f.description} is") for f in facts]
    produced = [""] * len(facts)
    for n in sorted({len(p) for p in prompts}):
        idx = [i for i, p in enumerate(prompts) if len(p) == n]
        canvas = np.full((len(idx), seq_len), tok.eos_id, np.int32)
        canvas[:, :n] = [prompts[i] for i in idx]
        out = np.asarray(ar_greedy_decode(result.state.params, jnp.asarray(canvas), config=result.model_config,
                                          start=n))
        for row, i in enumerate(idx):
            produced[i] = _until_eos(tok, out[row, n:])
    answers = [f.description if forward else f.name for f in facts]
    return QueryResult([(tok.decode(q), a, answer_part(p), answer_matches(f"{a} .", p))
                        for q, a, p in zip(prompts, answers, produced, strict=True)])


def query_mdm_infill(result: TrainResult, facts: list[Fact], seq_len: int) -> QueryResult:
    """`<mask> <mask> is DESCRIPTION .`: the name slots are filled in place.

    Dream's `maskgit_plus` decodes masks inside the prompt; this is the query an MDM was trained
    to answer without ever seeing a reversed fact.
    """
    tok = result.tokenizer
    rows, lengths = [], []
    for f in facts:
        name, rest = tok.encode(f.name), tok.encode(f"is {f.description} .")
        rows.append([tok.mask_id] * len(name) + rest + [tok.eos_id] * (seq_len - 1 - len(name) - len(rest)))
        lengths.append(len(name))
    model = DiffusionLM(result.model_config, result.state.params)
    # One more mask after the row closes it; the masks inside it are decoded too (Dream semantics).
    out = model.diffusion_generate(np.asarray(rows, np.int32), max_new_tokens=1, steps=max(lengths) + 1,
                                   alg="maskgit_plus", temperature=0.0).sequences
    samples = []
    for i, (n, f) in enumerate(zip(lengths, facts, strict=True)):
        name = tok.decode(out[i, :n].tolist())
        samples.append((f"{' '.join(['<mask>'] * n)} is {f.description} .", f.name, name, answer_matches(f.name, name)))
    return QueryResult(samples)


def query_mdm(result: TrainResult, exp: ExperimentConfig) -> dict[str, QueryResult]:
    """Forward and reverse-sentence recall of the trained MDM by `dlm-jax eval`'s `reverse_curse` task.

    The task reads the facts and the canvas (the rest of the training row) from the run's
    training record, as it does for a model folder that `dlm-jax train` exported.
    """
    record = TrainingRecord(result.out_dir, dataclasses.asdict(exp.data), exp.train.seq_len, exp.train.objective,
                            exp.train.max_steps)
    model = DiffusionLM(result.model_config, result.state.params)
    sampler = tasks.REVERSE_CURSE_SAMPLER
    ctx = tasks.EvalContext(model, result.tokenizer, sampler=sampler, estimator=Estimator(), training=record)
    samples = tasks.reverse_curse(ctx).samples
    out = {}
    for direction, name in EVAL_DIRECTIONS.items():
        mine = [s for s in samples if s["direction"] == direction]
        out[name] = QueryResult([(s["prompt"], answer_part(s["gold"]), answer_part(s["prediction"]), s["acc"])
                                 for s in mine])
    return out


def experiment(
    objective: str,
    out_dir: pathlib.Path,
    *,
    num_facts: int,
    steps: int,
    seq_len: int,
    batch_size: int,
    width: int,
    layers: int,
    lr: float,
    seed: int,
    progress: bool,
) -> ExperimentConfig:
    """The config of one model of the pair (same size, data and optimiser; only the objective differs)."""
    return experiment_from_dict({
        "model": {"family": "smdm", "vocab_size": 8, "hidden_size": width, "num_layers": layers,
                  "num_heads": max(1, width // 32), "intermediate_size": 4 * width, "max_position_embeddings": 64},
        "train": {"objective": objective, "max_steps": steps, "batch_size": batch_size, "seq_len": seq_len,
                  "lr": lr, "min_lr": lr / 10, "warmup_steps": max(1, steps // 20), "weight_decay": 0.0,
                  "log_every": max(1, steps // 50), "seed": seed, "eval_mc_samples": 4, "eval_batches": 1},
        "data": {"kind": "reverse_curse", "pack": False, "options": {"num_facts": num_facts}, "task_seed": seed},
        "checkpoint": {"every": 0, "resume": False, "export": False},
        "logging": {"out_dir": str(out_dir / objective), "progress": progress},
    })


def run(out_dir: str | pathlib.Path, *, num_facts: int = 32, steps: int = 600, seq_len: int = 12,
        batch_size: int = 32, width: int = 128, layers: int = 2, lr: float = 2e-3, seed: int = 0,
        progress: bool = True) -> dict[str, Any]:
    """Train both models and query forward, reverse (infill, MDM only) and reverse (sentence, both)."""
    out_dir = pathlib.Path(out_dir)
    facts = reverse_curse_facts(num_facts, seed=seed)
    report: dict[str, Any] = {"facts": facts, "models": {}}
    for objective in ("mdm", "ar"):
        exp = experiment(objective, out_dir, num_facts=num_facts, steps=steps, seq_len=seq_len,
                         batch_size=batch_size, width=width, layers=layers, lr=lr, seed=seed, progress=progress)
        trainer = Trainer(exp)
        result = trainer.run()
        trainer.close()
        if objective == "mdm":
            queries = query_mdm(result, exp)
            queries = {"forward": queries["forward"], "reverse_infill": query_mdm_infill(result, facts, seq_len),
                       "reverse_sentence": queries["reverse_sentence"]}
        else:
            queries = {d: query_ar(result, facts, d, seq_len) for d in ("forward", "reverse_sentence")}
        report["models"][objective] = {
            "result": result,
            "params": result.model_config.non_embedding_params(),
            "queries": queries,
        }
    return report
