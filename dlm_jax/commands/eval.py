"""`dlm-jax eval`: built-in tasks (Countdown, Sudoku, GSM8K, reverse curse, perplexity) -> results JSON."""

from __future__ import annotations

import argparse
import pathlib

from dlm_jax.commands.generate import MESH_HELP
from dlm_jax.parallel.distributed import add_distributed_args

EXAMPLE = """examples:
  dlm-jax eval --model dream7b_jax --tasks countdown3,sudoku --steps 24 --max-new-tokens 24 --alg entropy \\
      --output results/dream_planning.json
  dlm-jax eval --model Dream-v0-Base-7B --tasks gsm8k --data gsm8k=gsm8k_test.jsonl --num-fewshot 5 \\
      --max-new-tokens 256 --steps 256 --alg entropy --output results/gsm8k.json
  dlm-jax eval --model runs/tiny_mdm/model --tasks reverse_curse      # facts and canvas as the run trained
  dlm-jax eval --model dream7b_jax --tasks countdown3 --mesh fsdp=4,tensor=2 --output results/countdown.json
  python launch/local.py --num-processes 2 -- dlm-jax eval --model dream7b_jax --tasks countdown3 --mesh fsdp=-1
  dlm-jax eval --model runs/reverse/model --tasks reverse_curse --option num_facts=64 --option facts_seed=0
  dlm-jax eval --model smdm_jax --tasks perplexity --data perplexity=val.jsonl --estimator elbo --mc-num 128 \\
      --option seq_len=1024 --output results/ppl.json
tasks: countdown3 countdown4 countdown5 sudoku sudoku_4x4_<4..12> gsm8k reverse_curse perplexity
perplexity = exp(NLL per target token) of each text window scored on its own, conditioned on its first
token (a BOS if the model has one), as lm-eval's rolling perplexity; with --estimator elbo/elbo_llada it
is an upper bound (ppl_upper_bound). It can exceed the vocabulary size: only a uniform model scores exactly
V, and a model confidently wrong on text unlike its training rows scores worse (e.g. the tiny demos train on
rows EOS-padded to train.seq_len and never see a bare sentence, so bare-text perplexity is in the thousands
while the ELBO on their training rows is about 1.1 nats/token).
results JSON is strict JSON: a value that cannot be computed is null, with its reason under null_reasons.
several processes (--distributed, launch/local.py) run in lockstep: each runs every request on the one global
--mesh, and process 0 prints and writes the results.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dlm_jax.commands.sampler_flags import add_sampler_flags

    p = sub.add_parser(
        "eval",
        help="evaluate a model on built-in tasks and write lm-eval-layout results JSON",
        description="Evaluate a model on built-in tasks. For lm-eval tasks use "
        "`python -m dlm_jax.evaluation.harness --model dlm_jax ...` (see README).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="an HF model folder or a dlm_jax checkpoint folder")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder/file (default: the model folder)")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--mesh", default=None, metavar="AXIS=SIZE,...", help=MESH_HELP)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runtime model override, e.g. mask_token_id=811 or logit_shift=false (repeatable)",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[TASK=]PATH",
        help="task data file: TASK=PATH for one task, or PATH for every task (gsm8k and perplexity need one; "
        "countdown/sudoku default to Dream's test sets) (repeatable)",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N documents")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's own)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation / requests per likelihood call")
    p.add_argument("--seed", type=int, default=0)
    add_sampler_flags(p, {"max_new_tokens": "the task's own"})
    e = p.add_argument_group("likelihood estimator (perplexity)")
    e.add_argument("--estimator", default="elbo", choices=("elbo", "elbo_llada", "chain"))
    e.add_argument("--mc-num", type=int, default=128, help="Monte-Carlo samples per request (ELBO estimators)")
    e.add_argument(
        "--mc-batch-size", type=int, default=None, help="samples per forward pass (default: min(mc-num, 32))"
    )
    e.add_argument(
        "--mc-eps",
        type=float,
        default=1e-3,
        help="the ELBO estimator's minimum mask ratio (p_mask = (1 - eps) t + eps); --eps is the sampler's",
    )
    e.add_argument("--likelihood-cfg", type=float, default=0.0, help="CFG scale on likelihoods")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task option: num_facts=, facts_seed= (reverse_curse), prompt=dream|trained (countdown, sudoku), "
        "seq_len= (perplexity). A model folder written by `dlm-jax train` supplies the defaults of the task it "
        "was trained on (dlm_jax_training.json); explicit options win",
    )
    p.add_argument("--output", type=pathlib.Path, default=None, help="results JSON path (strict JSON: no NaN)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--log-samples", action="store_true", help="include per-document predictions in the JSON")
    p.add_argument(
        "--wandb-project",
        default=None,
        help="also log the metrics to this wandb project (offline, with a note, when no API key is set)",
    )
    add_distributed_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from dlm_jax.parallel.distributed import initialize_from_args, is_primary

    initialize_from_args(args)  # joins a multi-process job (if any) before JAX sees a device
    from dlm_jax.api import DiffusionLM
    from dlm_jax.commands.generate import open_tokenizer
    from dlm_jax.commands.sampler_flags import given_flags, sampler_settings
    from dlm_jax.data.training_record import read_training_record
    from dlm_jax.evaluation.estimator import Estimator
    from dlm_jax.evaluation.results import log_to_wandb, write_json
    from dlm_jax.evaluation.runner import evaluate_tasks
    from dlm_jax.evaluation.tasks import EvalContext, resolve_tasks
    from dlm_jax.models.config import parse_options, parse_overrides

    tasks = resolve_tasks([t.strip() for t in args.tasks.split(",") if t.strip()])
    if args.output is not None:
        check_output(args.output, args.overwrite)
    given = given_flags(args)
    counts = {"limit": args.limit, "batch_size": args.batch_size, "max_new_tokens": given.get("max_new_tokens"),
              "steps": given.get("steps")}
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be >= 1")
    estimator = Estimator(
        kind=args.estimator,
        mc_num=args.mc_num,
        mc_batch_size=args.mc_batch_size,
        eps=args.mc_eps,
        cfg_scale=args.likelihood_cfg,
        greedy_check=False,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    data_files, data_all = {}, None
    for item in args.data:
        task, sep, path = item.partition("=")
        if sep and task in tasks:
            data_files[task] = pathlib.Path(path)
        elif sep:
            raise ValueError(f"--data {item!r}: {task!r} is not one of the requested tasks {tasks}")
        else:
            data_all = pathlib.Path(item)
    overrides = parse_overrides(args.set)
    tokenizer = open_tokenizer(args.model, args.tokenizer, needed=True)
    model = DiffusionLM.from_pretrained(args.model, dtype=args.dtype, mesh=args.mesh, **overrides)
    sampler = sampler_settings(args, model.config.eos_token_id, tokenizer)
    max_new_tokens = sampler.pop("max_new_tokens", None)
    ctx = EvalContext(
        model,
        tokenizer,
        sampler=sampler,
        estimator=estimator,
        max_new_tokens=max_new_tokens,
        batch_size=args.batch_size,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        data=data_all,
        seed=args.seed,
        options=parse_options(args.option, "--option"),
        training=read_training_record(args.model),
    )
    model_args = {
        "pretrained": str(args.model),
        "dtype": args.dtype,
        "tokenizer": str(args.tokenizer or args.model),
        **overrides,
        **({} if args.mesh is None else {"mesh": args.mesh}),
    }
    results = evaluate_tasks(ctx, tasks, model_args=model_args, log_samples=args.log_samples, data_files=data_files)
    if not is_primary():
        return 0
    for name, entry in results["results"].items():
        shown = {
            k.split(",")[0]: round(v, 4) if isinstance(v, float) else v
            for k, v in entry.items()
            if "," in k and "stderr" not in k
        }
        print(f"{name}: {json.dumps(shown)}")
    if args.output:
        print(f"wrote {write_json(args.output, results, overwrite=args.overwrite)}")
    if args.wandb_project:
        log_to_wandb(results, args.wandb_project, out_dir=args.output.parent if args.output else None)
    return 0


def check_output(path: pathlib.Path, overwrite: bool) -> None:
    """Refuse an --output that is a folder, or an existing file without --overwrite (checked before any work)."""
    if path.is_dir():
        raise ValueError(f"--output {path} is a folder; expected a JSON file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--output {path} exists; pass --overwrite to replace it")
