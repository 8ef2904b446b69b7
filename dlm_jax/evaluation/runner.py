"""Run built-in tasks on a model and assemble lm-eval-layout results with every setting recorded."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

from dlm_jax.evaluation.generation import effective_sampler
from dlm_jax.evaluation.results import provenance, task_entry
from dlm_jax.evaluation.tasks import OUTPUT_TYPES, TASK_SAMPLERS, TASKS, EvalContext, resolve_tasks


def evaluate_tasks(
    ctx: EvalContext,
    tasks: list[str],
    *,
    model_args: dict[str, Any] | None = None,
    log_samples: bool = False,
    data_files: dict[str, pathlib.Path] | None = None,
) -> dict[str, Any]:
    """Run `tasks` and return a results dict shaped like `lm_eval.simple_evaluate`'s.

    `data_files` maps a task name to its data file (overriding `ctx.data` for that task). The sampler
    settings are recorded at their effective values (e.g. `top_k: 50` where Dream's default applies);
    `max_new_tokens: null` means each task's own length.

    Example:
        >>> from dlm_jax.api import DiffusionLM
        >>> from dlm_jax.data.tasks import reverse_curse_facts
        >>> from dlm_jax.data.tokenizer import SimpleTokenizer
        >>> from dlm_jax.evaluation.estimator import Estimator
        >>> from dlm_jax.models.config import ModelConfig
        >>> tok = SimpleTokenizer.build([f.forward_text for f in reverse_curse_facts(4, seed=0)])
        >>> model = DiffusionLM.init(ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                                      intermediate_size=64, mask_token_id=tok.mask_id))
        >>> ctx = EvalContext(model, tok, sampler={"alg": "entropy"}, estimator=Estimator(), max_new_tokens=4,
        ...                   limit=2, options={"num_facts": 4, "facts_seed": 0})
        >>> res = evaluate_tasks(ctx, ["reverse_curse"])
        >>> res["results"]["reverse_curse"]  # an untrained model recalls nothing
        {'alias': 'reverse_curse', 'forward_acc,none': 0.0, 'forward_acc_stderr,none': 0.0,
         'reverse_acc,none': 0.0, 'reverse_acc_stderr,none': 0.0}
        >>> kwargs = res["configs"]["reverse_curse"]["generation_kwargs"]  # the effective settings
        >>> kwargs["alg"], kwargs["top_k"], kwargs["max_new_tokens"], kwargs["steps"]
        ('entropy', 50, 4, 4)
    """
    resolve_tasks(tasks)
    start = time.time()
    out: dict[str, Any] = {
        "results": {},
        "configs": {},
        "versions": {},
        "n-shot": {},
        "higher_is_better": {},
        "n-samples": {},
    }
    samples: dict[str, list] = {}
    for name in tasks:
        task_ctx = dataclasses.replace(ctx, sampler={**TASK_SAMPLERS.get(name, {}), **ctx.sampler})
        if data_files and name in data_files:
            task_ctx = dataclasses.replace(task_ctx, data=pathlib.Path(data_files[name]))
        sampler = effective_sampler({**task_ctx.sampler, "max_new_tokens": ctx.max_new_tokens})
        res = TASKS[name](task_ctx)
        out["results"][name] = task_entry(name, res.metrics, res.stderrs)
        output_type = OUTPUT_TYPES.get(name, "generate_until")
        out["configs"][name] = {
            "task": name,
            "output_type": output_type,
            **res.config,
            **(
                {"generation_kwargs": dict(sampler)}
                if output_type == "generate_until"
                else {"estimator": ctx.estimator.to_dict()}
            ),
        }
        out["versions"][name] = 1.0
        out["n-shot"][name] = int(res.config.get("num_fewshot", 0))
        out["higher_is_better"][name] = res.higher_is_better
        out["n-samples"][name] = {
            "original": res.n_original,
            "effective": len(res.samples) if output_type == "generate_until" else res.n_original,
        }
        samples[name] = res.samples
    cfg = ctx.model.config
    info = provenance()
    out["config"] = {
        "model": "dlm_jax",
        "model_args": model_args or {},
        "model_config": cfg.to_dict(),
        "estimator": ctx.estimator.to_dict(),
        "sampler": effective_sampler({**ctx.sampler, "max_new_tokens": ctx.max_new_tokens}),
        "batch_size": ctx.batch_size,
        "limit": ctx.limit,
        "num_fewshot": ctx.num_fewshot,
        "seed": ctx.seed,
        "options": dict(ctx.options),
        **{k: v for k, v in info.items() if k not in ("git_hash", "date")},
    }
    out["git_hash"] = info["git_hash"]
    out["date"] = info["date"]
    out["dlm_jax_version"] = info["dlm_jax_version"]
    out["total_evaluation_time_seconds"] = str(time.time() - start)
    if log_samples:
        out["samples"] = samples
    return out
