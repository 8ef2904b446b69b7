"""Built-in tasks of `dlm-jax eval`: Dream's Countdown/Sudoku, GSM8K, reverse curse, perplexity bounds."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable
from typing import Any

from dlm_jax.data.encode import sft_texts
from dlm_jax.data.jsonl import iter_jsonl
from dlm_jax.data.training_record import TrainingRecord
from dlm_jax.evaluation import scorers
from dlm_jax.evaluation.estimator import Estimator
from dlm_jax.evaluation.generation import generate_continuations
from dlm_jax.evaluation.results import mean_and_stderr

DATA_DIR = pathlib.Path(__file__).with_name("data") / "dream_planning"

CD_HEADERS = {
    3: "Given 4 numbers, use +-*/ to operate over the first three numbers to achieve the last number.\n\n",
    4: "Given 5 numbers, use +-*/ to operate over the first four numbers to achieve the fifth number.\n\n",
    5: "Given 6 numbers, use +-*/ to operate over the first five numbers to achieve the last number.\n\n",
}
SUDOKU_HEADER = (
    "Fill the positions where the values are 0 in a 4x4 grid with digits 1-4 so that each column, each row, "
    "and each of the four 2x2 subgrids that compose the grid contains all of the digits from 1 to 4.\n\n"
)


@dataclasses.dataclass
class EvalContext:
    """Everything a task needs: the model, its tokenizer, and the recorded settings.

    `training`: what the model folder records of its training run; a task the model was trained on
    takes its defaults from it (facts, canvas length, prompt layout). Explicit `options` win.
    """

    model: Any
    tokenizer: Any
    sampler: dict[str, Any]
    estimator: Estimator
    max_new_tokens: int | None = None
    batch_size: int = 8
    limit: int | None = None
    num_fewshot: int | None = None
    data: pathlib.Path | None = None
    seed: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: TrainingRecord | None = None

    def trained_on(self, kind: str) -> dict[str, Any] | None:
        """The recorded data section when the model was trained on the built-in task `kind`."""
        return self.training.task(kind) if self.training is not None else None


@dataclasses.dataclass
class TaskResult:
    """Metrics (with standard errors), per-document samples, and the task's settings."""

    metrics: dict[str, float]
    stderrs: dict[str, float]
    higher_is_better: dict[str, bool]
    samples: list[dict[str, Any]]
    n_original: int
    config: dict[str, Any]


def read_jsonl(path: str | pathlib.Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Records of a JSONL file; a bad line raises one ValueError naming the file and line number."""
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in required if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing string field(s) {missing} (required: {list(required)})")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no records")
    return rows


def _limit(rows: list, limit: int | None) -> list:
    return rows if limit is None else rows[:limit]


def _generate(ctx: EvalContext, prompts: list[str], max_new: int, stops: tuple[str, ...]) -> list[str]:
    return _generate_ids(ctx, [ctx.tokenizer.encode(p) for p in prompts], max_new, stops)


def _generate_ids(ctx: EvalContext, ids: list[list[int]], max_new: int, stops: tuple[str, ...]) -> list[str]:
    return generate_continuations(
        ctx.model,
        ctx.tokenizer,
        ids,
        max_new_tokens=ctx.max_new_tokens or max_new,
        sampler=ctx.sampler,
        batch_size=ctx.batch_size,
        seed=ctx.seed,
        stops=stops,
    )


def _prompt_layout(ctx: EvalContext, kind: str, name: str) -> str:
    """`trained` (the model's own zero-shot SFT layout `INPUT\\n` -> OUTPUT, when its folder records training
    on `kind` as input/output pairs) or `dream` (Dream's few-shot template); `--option prompt=` wins."""
    trained = ctx.trained_on(kind)
    pairs = trained is not None and trained.get("format") in ("text", "pairs")
    layout = str(ctx.options.get("prompt", "trained" if pairs else "dream"))
    if layout not in ("dream", "trained"):
        raise ValueError(f"--option prompt={layout}: expected dream or trained")
    if layout == "trained":
        if not pairs:
            raise ValueError(f"--option prompt=trained: the model folder records no training on {kind} input/output "
                             "pairs (dlm_jax_training.json)")
        if ctx.num_fewshot:
            raise ValueError(f"--num-fewshot {ctx.num_fewshot}: task {name!r} uses the zero-shot layout this model was "
                             f"trained on ({ctx.training.path}); use --num-fewshot 0 or --option prompt=dream")
    return layout


def _trained_prompts(ctx: EvalContext, rows: list[dict], name: str) -> tuple[list[list[int]], int]:
    """Ids of each row's prompt in the training layout, and the new tokens that fill the training row."""
    ids = [ctx.tokenizer.encode(sft_texts(r, "pairs", ctx.tokenizer, name)[0]) for r in rows]
    canvas = ctx.training.seq_len - max(len(p) for p in ids)
    if ctx.max_new_tokens is None and canvas < 1:
        raise ValueError(f"task {name!r}: the prompts are {max(len(p) for p in ids)} tokens, as long as the training "
                         f"rows (seq_len={ctx.training.seq_len}); nothing is left to generate")
    return ids, canvas


def _dream_prompts(header: str, fewshot: list[dict], rows: list[dict], shot: str, query: str) -> list[str]:
    """Dream's few-shot prompts: the header, the solved examples (`shot`), then each row's `query`."""
    template = header + "\n\n".join(shot.format(**r) for r in fewshot)
    return [template + ("\n\n" if fewshot else "") + query.format(**r) for r in rows]


def _check_context(ctx: EvalContext, name: str, ids: list[list[int]], max_new: int, shots: int) -> None:
    """One clear error when Dream's template does not fit the model's context (e.g. a tiny trained model)."""
    longest, new = max(len(p) for p in ids), ctx.max_new_tokens or max_new
    limit = ctx.model.config.max_position_embeddings
    if longest + new > limit:
        advice = "use --num-fewshot 0" if shots else "the model's context is too short for this prompt"
        raise ValueError(
            f"task {name!r}: Dream's {shots}-shot prompt is {longest} tokens; with {new} new tokens it exceeds the "
            f"model's context of {limit} (max_position_embeddings); {advice}, or evaluate a model trained on this "
            "task (`dlm-jax train` records its prompt layout in the model folder)"
        )


def _accuracy_result(name_to_flags: dict[str, list[bool]], samples, n_original, config) -> TaskResult:
    metrics, stderrs = {}, {}
    for name, flags in name_to_flags.items():
        metrics[name], stderrs[name] = mean_and_stderr([float(f) for f in flags])
    return TaskResult(metrics, stderrs, {k: True for k in metrics}, samples, n_original, config)


def _few_shot_split(rows: list[dict], shots: int, name: str) -> tuple[list[dict], list[dict]]:
    if shots < 0 or shots >= len(rows):
        raise ValueError(f"num_fewshot={shots} for task {name!r} must be in [0, {len(rows) - 1}]")
    return rows[:shots], rows[shots:]


@dataclasses.dataclass(frozen=True)
class PlanningTask:
    """One of Dream's planning tasks (Countdown, Sudoku): its pieces; calling it runs the one shared body.

    The test set is `DATA_DIR/file` (or `--data`); prompts are Dream's few-shot template (`header`,
    solved `shot` examples, the row's `query`, formatted with the row's fields) or, for a model
    trained on `kind`, its own zero-shot layout; `clean` post-processes each generation (default:
    unchanged) and `score` is Dream's metric `(input, prediction) -> correct`.
    """

    name: str
    kind: str
    file: str
    header: str
    shot: str
    query: str
    max_new: int
    stop: str
    score: Callable[[str, str], bool]
    metric: str
    clean: Callable[[str], str] = str

    def __call__(self, ctx: EvalContext) -> TaskResult:
        path = ctx.data or DATA_DIR / self.file
        rows = read_jsonl(path, ("input", "output"))
        layout = _prompt_layout(ctx, self.kind, self.name)
        shots = (8 if layout == "dream" else 0) if ctx.num_fewshot is None else ctx.num_fewshot
        fewshot, rows = _few_shot_split(rows, shots, self.name)
        n_original, rows = len(rows), _limit(rows, ctx.limit)
        if layout == "trained":
            ids, max_new = _trained_prompts(ctx, rows, self.name)
        else:
            prompts = _dream_prompts(self.header, fewshot, rows, self.shot, self.query)
            ids, max_new = [ctx.tokenizer.encode(p) for p in prompts], self.max_new
            _check_context(ctx, self.name, ids, max_new, shots)
        preds = [self.clean(p) for p in _generate_ids(ctx, ids, max_new, (self.stop,))]
        valid = [self.score(r["input"], p) for r, p in zip(rows, preds, strict=True)]
        exact = [p.strip() == r["output"] for r, p in zip(rows, preds, strict=True)]
        samples = [
            {"input": r["input"], "gold": r["output"], "prediction": p, "acc": v}
            for r, p, v in zip(rows, preds, valid, strict=True)
        ]
        return _accuracy_result(
            {"acc": valid, "exact_match": exact},
            samples,
            n_original,
            {"dataset_path": str(path), "num_fewshot": shots, "prompt": layout, "metric": self.metric},
        )


def _countdown_score(problem: str, prediction: str) -> bool:
    return scorers.countdown_correct(problem, prediction.strip())


def _without_spaces(prediction: str) -> str:
    return prediction.replace(" ", "")


def countdown(operands: int) -> PlanningTask:
    """Dream's Countdown with `operands` numbers (cd3/cd4/cd5 test sets), scored by Dream's `cd_metric`."""
    return PlanningTask(
        name=f"countdown{operands}", kind="countdown", file=f"cd{operands}_test.jsonl", header=CD_HEADERS[operands],
        shot="Input: {input}\nOutput: {output}", query="Input: {input}\nOutput: ", max_new=32, stop="\n",
        score=_countdown_score, metric="Dream cd_metric",
    )


def sudoku(given: int) -> PlanningTask:
    """Dream's 4x4 Sudoku with `given` filled cells, scored by Dream's `sudoku_metric` (spaces dropped first)."""
    return PlanningTask(
        name=f"sudoku_4x4_{given}", kind="sudoku", file=f"sudoku_4x4_{given}.jsonl", header=SUDOKU_HEADER,
        shot="Input:\n{input}\nOutput:\n{output}", query="Input:\n{input}\nOutput:\n ", max_new=24, stop="\n\n",
        score=scorers.sudoku_valid, metric="Dream sudoku_metric", clean=_without_spaces,
    )


def gsm8k(ctx: EvalContext) -> TaskResult:
    if ctx.data is None:
        raise ValueError("task 'gsm8k' needs --data <file.jsonl> with 'question' and 'answer' fields (GSM8K test)")
    rows = read_jsonl(ctx.data, ("question", "answer"))
    shots = 0 if ctx.num_fewshot is None else ctx.num_fewshot
    fewshot, rows = _few_shot_split(rows, shots, "gsm8k")
    for i, r in enumerate(rows):
        try:
            scorers.gsm8k_gold(r["answer"])
        except ValueError as e:
            raise ValueError(f"{ctx.data}: record {shots + i + 1}: {e}") from None
    n_original, rows = len(rows), _limit(rows, ctx.limit)
    prefix = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in fewshot)
    prompts = [prefix + f"Question: {r['question']}\nAnswer:" for r in rows]
    preds = _generate(ctx, prompts, 256, ("Question:", "</s>", "<|im_end|>"))
    strict = [scorers.gsm8k_correct(r["answer"], p, "strict") for r, p in zip(rows, preds, strict=True)]
    flexible = [scorers.gsm8k_correct(r["answer"], p, "flexible") for r, p in zip(rows, preds, strict=True)]
    samples = [
        {"question": r["question"], "gold": scorers.gsm8k_gold(r["answer"]), "prediction": p, "strict": s}
        for r, p, s in zip(rows, preds, strict, strict=True)
    ]
    return _accuracy_result(
        {"exact_match_strict": strict, "exact_match_flexible": flexible},
        samples,
        n_original,
        {"dataset_path": str(ctx.data), "num_fewshot": shots, "prompt": "Question: ...\\nAnswer:"},
    )


# The reverse-curse task's sampler settings where the user sets none (`TASK_SAMPLERS`): greedy LLaDA
# low-confidence remasking in one block (SMDM's evaluation, and what `dlm-jax demo` reports).
REVERSE_CURSE_SAMPLER = {"alg": "low_confidence", "temperature": 0.0}


def reverse_curse(ctx: EvalContext) -> TaskResult:
    """Forward (`NAME is` -> description) and reverse (`DESCRIPTION is` -> name) recall by generation.

    Facts: `--data` (fields name, description), else `reverse_curse_facts(num_facts, facts_seed)`:
    by default the facts the model was trained on when its folder records a reverse-curse run
    (else 64 facts, seed 0). The generated canvas fills the training row (`seq_len` minus the
    prompt) for such a model, else it is as long as the longest answer.
    """
    trained = ctx.trained_on("reverse_curse")
    if ctx.data is not None:
        rows = read_jsonl(ctx.data, ("name", "description"))
        facts = [(r["name"], r["description"]) for r in rows]
        source = str(ctx.data)
    else:
        from dlm_jax.data.tasks import reverse_curse_facts

        num = trained["options"].get("num_facts", 64) if trained else 64
        seed = trained["task_seed"] if trained else 0
        num, seed = int(ctx.options.get("num_facts", num)), int(ctx.options.get("facts_seed", seed))
        facts = [(f.name, f.description) for f in reverse_curse_facts(num, seed=seed)]
        source = f"dlm_jax.data.tasks.reverse_curse_facts(num_facts={num}, seed={seed})"
    n_original, facts = len(facts), _limit(facts, ctx.limit)
    flags, samples = {}, []
    for direction, pairs in (
        ("forward", [(f"{n} is", f"{d} .") for n, d in facts]),
        ("reverse", [(f"{d} is", f"{n} .") for n, d in facts]),
    ):
        ids = [ctx.tokenizer.encode(p) for p, _ in pairs]
        longest = max(len(ctx.tokenizer.encode(answer)) for _, answer in pairs)
        if trained:
            longest = max(longest, ctx.training.seq_len - max(len(p) for p in ids))
        preds = _generate_ids(ctx, ids, longest, ())
        flags[f"{direction}_acc"] = [scorers.answer_matches(a, p) for (_, a), p in zip(pairs, preds, strict=True)]
        samples += [
            {"direction": direction, "prompt": q, "gold": a, "prediction": p, "acc": ok}
            for (q, a), p, ok in zip(pairs, preds, flags[f"{direction}_acc"], strict=True)
        ]
    config = {"dataset_path": source, "num_fewshot": 0}
    if trained:
        config["task_settings"] = str(ctx.training.path)
    return _accuracy_result(flags, samples, n_original, config)


def perplexity(ctx: EvalContext) -> TaskResult:
    """Perplexity bound from the ELBO (or the exact chain rule) over windows of a text corpus.

    `--data`: a JSONL file with a `text` field, or a plain-text file (one document per line).
    Each window of `seq_len` tokens conditions on its first token (a BOS if the model has one).
    `seq_len` defaults to the training row length of a model trained by `dlm-jax train` (its
    folder's record), else to the context (at most 1024).
    """
    if ctx.data is None:
        raise ValueError("task 'perplexity' needs --data <file.jsonl (field 'text') or file.txt>")
    if ctx.data.suffix == ".jsonl":
        texts = [r["text"] for r in read_jsonl(ctx.data, ("text",))]
    else:
        texts = [t for t in pathlib.Path(ctx.data).read_text().splitlines() if t.strip()]
    n_original, texts = len(texts), _limit(texts, ctx.limit)
    cfg = ctx.model.config
    default = ctx.training.seq_len if ctx.training is not None else min(cfg.max_position_embeddings, 1024)
    seq_len = int(ctx.options.get("seq_len", default))
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be >= 2")
    prompts, targets = [], []
    for text in texts:
        ids = ctx.tokenizer.encode(text)
        if cfg.bos_token_id is not None:
            ids = [cfg.bos_token_id] + ids
        for start in range(0, max(len(ids) - 1, 0), seq_len - 1):
            window = ids[start : start + seq_len]
            if len(window) >= 2:
                prompts.append(window[:1])
                targets.append(window[1:])
    if not targets:
        raise ValueError(f"{ctx.data}: no document has 2 or more tokens")
    scores = ctx.estimator.score(ctx.model.params, cfg, prompts, targets, max_length=seq_len, call=ctx.model.call)
    tokens = sum(s.num_tokens for s in scores)
    nll = -sum(s.loglik for s in scores)
    exact = ctx.estimator.kind == "chain"
    se = 0.0 if exact else math.sqrt(sum(s.stderr**2 for s in scores))
    key = "ppl" if exact else "ppl_upper_bound"
    metrics = {"nll_per_token" if exact else "nll_per_token_upper_bound": nll / tokens, key: math.exp(nll / tokens)}
    stderrs = {k: se / tokens if k.startswith("nll") else math.exp(nll / tokens) * se / tokens for k in metrics}
    samples = [
        {"window": i, "tokens": s.num_tokens, "loglik": s.loglik, "stderr": s.stderr} for i, s in enumerate(scores)
    ]
    return TaskResult(
        metrics,
        stderrs,
        {k: False for k in metrics},
        samples,
        n_original,
        {"dataset_path": str(ctx.data), "seq_len": seq_len, "windows": len(targets), "tokens": tokens},
    )


TASKS: dict[str, Callable[[EvalContext], TaskResult]] = {
    "countdown3": countdown(3),
    "countdown4": countdown(4),
    "countdown5": countdown(5),
    "sudoku": sudoku(10),
    **{f"sudoku_4x4_{n}": sudoku(n) for n in range(4, 13)},
    "gsm8k": gsm8k,
    "reverse_curse": reverse_curse,
    "perplexity": perplexity,
}
OUTPUT_TYPES = {"perplexity": "loglikelihood_rolling"}
# Sampler settings a task uses where the user sets none (explicit flags win).
TASK_SAMPLERS = {"reverse_curse": REVERSE_CURSE_SAMPLER}


def resolve_tasks(names: list[str]) -> list[str]:
    """Validate task names (an unknown one raises a ValueError listing the known ones)."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; available: {', '.join(TASKS)}")
    if not names:
        raise ValueError(f"no task given; available: {', '.join(TASKS)}")
    return names
