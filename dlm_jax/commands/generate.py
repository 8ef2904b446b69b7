"""`dlm-jax generate`: diffusion sampling from the command line, one prompt or a JSONL batch."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

from dlm_jax.data.tokenizer import Tokenizer

EXAMPLE = """example:
  dlm-jax generate --model Dream-v0-Instruct-7B --prompt "The capital of France is" \\
      --max-new-tokens 64 --steps 64 --alg entropy --temperature 0.2 --top-p 0.95
  dlm-jax generate --model tests/data/parity/dream/model --prompt-ids 1,2,3 --max-new-tokens 8 --steps 8
  dlm-jax generate --model dream7b_jax --prompt "Hello" --mesh fsdp=4,tensor=2     # sharded over 8 devices
  dlm-jax generate --model llada_dir --set logit_shift=false --remasking low_confidence --block-length 32 \\
      --input-jsonl prompts.jsonl --output-jsonl out.jsonl --batch-size 8
JSONL input lines: {"prompt": "..."} or {"prompt_ids": [1, 2, 3]} (other keys are copied to the output).
"""


MESH_HELP = (
    "device mesh AXIS=SIZE,... over data,fsdp,tensor, e.g. fsdp=4,tensor=2 (default: one device): params placed "
    "by the training sharding rules, the same tokens as on one device"
)
MAX_NEW_TOKENS_DEFAULT = (
    "the rest of the training row for a model trained by dlm-jax (its dlm_jax_training.json), else 64 "
    "(within the model's context)"
)


def add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    """Model flags, the sampler flags (from `GenerateConfig`) and the call's own, shared by `generate` and `chat`."""
    from dlm_jax.commands.sampler_flags import add_sampler_flags

    p.add_argument("--model", required=True, help="HF model folder or dlm_jax checkpoint folder")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or file (default: the model folder's)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="runtime config override")
    p.add_argument("--mesh", default=None, metavar="AXIS=SIZE,...", help=MESH_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--until", action="append", default=[], help="stop string; the text is cut before it (repeatable)")
    add_sampler_flags(p, {"max_new_tokens": MAX_NEW_TOKENS_DEFAULT})


def call_options(args: argparse.Namespace, tokenizer: Any | None) -> dict[str, Any]:
    """The `diffusion_generate` call options the flags give (not sampler knobs): seed, tokenizer, stop strings."""
    return {"seed": args.seed, "tokenizer": tokenizer, "until": args.until or None}


def load_model(args: argparse.Namespace):
    from dlm_jax.api import DiffusionLM
    from dlm_jax.models.config import parse_overrides

    return DiffusionLM.from_pretrained(args.model, dtype=args.dtype, mesh=args.mesh, **parse_overrides(args.set))


def open_tokenizer(
    model: str, tokenizer: str | None, *, needed: bool, mask_token_id: int | None = None
) -> Tokenizer | None:
    """`--tokenizer PATH` when given, else the model folder's own tokenizer (through `load_tokenizer`).

    A model folder without one gives None, or the error `no tokenizer in MODEL: pass --tokenizer`
    when `needed` (text prompts).
    """
    from dlm_jax.data.tokenizer import has_tokenizer, load_tokenizer

    if tokenizer is not None:
        try:
            return load_tokenizer(tokenizer, mask_token_id=mask_token_id)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"--tokenizer {e}") from None
    folder = pathlib.Path(model)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}")
    if has_tokenizer(folder):
        return load_tokenizer(folder, mask_token_id=mask_token_id)
    if needed:
        raise FileNotFoundError(f"no tokenizer in {folder}: pass --tokenizer PATH")
    return None


def default_max_new_tokens(model_dir: str | pathlib.Path, context: int, longest_prompt: int) -> int:
    """New tokens when `--max-new-tokens` is not given: what fills the training row of a model trained by
    `dlm-jax train` (it learnt that canvas), else 64; at least 1 and never past the model's context."""
    from dlm_jax.data.training_record import read_training_record

    record = read_training_record(model_dir)
    wanted = record.seq_len - longest_prompt if record is not None else 64
    return max(1, min(wanted, context - longest_prompt))


def template_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Ids of the tokenizer's chat template rendered for `messages` plus the generation prompt."""
    return tokenizer.encode(tokenizer.chat_prompt(messages))


def parse_ids(text: str, vocab_size: int) -> list[int]:
    """`--prompt-ids 1,2,3` as a list of ids, each in `[0, vocab_size)`."""
    from dlm_jax.sampling.frontend import check_token_ids

    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--prompt-ids {text!r}: expected comma-separated integers like 1,2,3") from None
    if not ids:
        raise ValueError("--prompt-ids is empty")
    check_token_ids(ids, vocab_size, f"--prompt-ids {text}")
    return ids


def pad_id_for(model: Any, tokenizer: Any | None) -> int:
    for candidate in (model.config.pad_token_id, getattr(tokenizer, "pad_id", None), model.config.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def read_prompts(path: str, tokenizer: Any | None, vocab_size: int) -> Iterator[tuple[dict, list[int]]]:
    """`(record, prompt ids)` of each line of an --input-jsonl file: its 'prompt_ids', or its 'prompt' tokenized."""
    from dlm_jax.data.jsonl import iter_jsonl
    from dlm_jax.sampling.frontend import check_token_ids

    for number, record in iter_jsonl(path):
        if "prompt_ids" in record:
            ids = record["prompt_ids"]
            if not isinstance(ids, list) or not ids or not all(type(t) is int for t in ids):
                raise ValueError(
                    f"{path}:{number}: 'prompt_ids' must be a non-empty list of integers, got {json.dumps(ids)[:60]}"
                )
            yield record, check_token_ids(ids, vocab_size, f"{path}:{number}: prompt_ids").tolist()
        elif "prompt" in record:
            if tokenizer is None:
                raise ValueError(f"{path}:{number}: 'prompt' text needs a tokenizer; pass --tokenizer PATH "
                                 "or use 'prompt_ids'")
            ids = tokenizer.encode(record["prompt"])
            yield record, check_token_ids(ids, vocab_size, f"{path}:{number}: prompt (tokenized)").tolist()
        else:
            raise ValueError(f"{path}:{number}: each line needs 'prompt' or 'prompt_ids'")


def generate_batches(
    model, items: list[tuple[dict, list[int]]], gen, options: dict[str, Any], batch_size: int, multiple: int
) -> Iterator[list[dict]]:
    """Yield one list of output rows (input fields + completion, completion_ids and the cost: nfe, tokens_per_step,
    forward_equivalents) per finished batch.

    Every batch samples with the same seed, so a batch's rows do not depend on the batches before it
    (a resumed run with the same --batch-size reproduces an uninterrupted one).
    """
    from tqdm import tqdm

    from dlm_jax.sampling.frontend import left_pad

    pad = pad_id_for(model, options["tokenizer"])
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=len(starts) < 2, file=sys.stderr):
        chunk = items[start : start + batch_size]
        limit = model.config.max_position_embeddings - gen.max_new_tokens
        ids, mask = left_pad([prompt for _, prompt in chunk], pad, multiple, limit)
        out = model.diffusion_generate(ids, mask, gen, **options)
        yield [
            {
                **record,
                "completion": None if out.texts is None else out.texts[row],
                "completion_ids": out.completions[row].tolist(),
                "nfe": int(out.nfe[row]),
                "tokens_per_step": round(float(out.tokens_per_step[row]), 4),
                "forward_equivalents": round(float(out.forward_equivalents[row]), 4),
            }
            for row, (record, _) in enumerate(chunk)
        ]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="sample from a diffusion LM (Dream, LLaDA/SMDM or DiffuLLaMA semantics)",
        description="Generate with the jitted diffusion sampler. Prompts are text when the model folder (or "
        "--tokenizer) has a tokenizer, else token ids (--prompt-ids).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sampler_arguments(p)
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable; batched together)")
    p.add_argument("--prompt-ids", action="append", default=[], help="prompt as ids, e.g. 1,2,3 (repeatable)")
    p.add_argument("--input-jsonl", help="batch mode: one JSON object per line with 'prompt' or 'prompt_ids'")
    p.add_argument(
        "--output-jsonl",
        help="batch mode output (input fields + completion, completion_ids, nfe, tokens_per_step, "
        "forward_equivalents), written batch by batch",
    )
    p.add_argument("--resume", action="store_true", help="continue an --output-jsonl cut short: skip its done rows")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output-jsonl")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pad-multiple", type=int, default=16, help="round padded prompt lengths up (fewer recompiles)")
    p.add_argument("--chat-template", action="store_true", help="wrap each text prompt in the tokenizer's template")
    p.set_defaults(func=run)


def _prompts(args: argparse.Namespace, tokenizer: Any | None, vocab_size: int) -> list[tuple[dict, list[int]]]:
    from dlm_jax.sampling.frontend import check_token_ids

    items: list[tuple[dict, list[int]]] = []
    for text in args.prompt:
        if args.chat_template:
            ids = template_ids(tokenizer, [{"role": "user", "content": text}])
        else:
            ids = tokenizer.encode(text)
        check_token_ids(ids, vocab_size, f"--prompt {text!r} (tokenized)")
        items.append(({"prompt": text}, list(ids)))
    for text in args.prompt_ids:
        ids = parse_ids(text, vocab_size)
        items.append(({"prompt_ids": ids}, ids))
    if args.input_jsonl:
        items.extend(read_prompts(args.input_jsonl, tokenizer, vocab_size))
    if not items:
        raise ValueError("give a prompt: --prompt TEXT, --prompt-ids 1,2,3 or --input-jsonl FILE")
    return items


def _check_output_flags(args: argparse.Namespace) -> pathlib.Path | None:
    """The --output-jsonl path, after checking it against --resume / --overwrite (before any work is done)."""
    if not args.output_jsonl:
        if args.resume or args.overwrite:
            flag = "--resume" if args.resume else "--overwrite"
            raise ValueError(f"{flag} applies to --output-jsonl, which is not set")
        return None
    out = pathlib.Path(args.output_jsonl)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues --output-jsonl and --overwrite replaces it: pass one of them")
    if out.is_dir():
        raise ValueError(f"--output-jsonl {out} is a folder; expected a file path")
    if out.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"--output-jsonl {out} exists; pass --resume to continue it or --overwrite to replace it"
        )
    return out


def _write_streaming(out: pathlib.Path, batches: Iterator[list[dict]], mode: str, done: int) -> int:
    """Write each finished batch to `out` as it comes; SIGTERM stops between whole lines (exit 143)."""
    from dlm_jax.commands.jsonl_stream import JsonlWriter, Stopped, stop_on_sigterm

    writer = JsonlWriter(out, mode)
    try:
        with stop_on_sigterm() as guard:
            for rows in batches:
                with guard.atomic():
                    writer.write_batch(rows)
    except Stopped:
        print(
            f"dlm-jax generate: stopped by SIGTERM; {done + writer.count} rows are in {out} "
            "(rerun with --resume to finish)",
            file=sys.stderr,
        )
        return 143
    except (ValueError, FileNotFoundError) as e:
        if writer.count:
            raise type(e)(f"{e} ({done + writer.count} finished rows are kept in {out}; fix it and rerun with "
                          "--resume)") from None
        raise
    finally:
        writer.close()
    print(f"wrote {writer.count} completions to {out}" + (f" ({done} were already there)" if done else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.pad_multiple < 1:
        raise ValueError("--batch-size and --pad-multiple must be >= 1")
    out = _check_output_flags(args)
    from dlm_jax.commands.sampler_flags import given_flags, sampler_settings
    from dlm_jax.sampling.frontend import build_config

    given_flags(args)  # a bad sampler flag fails before the model loads
    tokenizer = open_tokenizer(args.model, args.tokenizer, needed=bool(args.prompt))
    model = load_model(args)
    items = _prompts(args, tokenizer, model.config.vocab_size)
    settings = sampler_settings(args, model.config.eos_token_id, tokenizer)
    if "max_new_tokens" not in settings:
        longest = max(len(prompt) for _, prompt in items)
        settings["max_new_tokens"] = default_max_new_tokens(args.model, model.config.max_position_embeddings, longest)
    gen, options = build_config(settings), call_options(args, tokenizer)
    if out is None:
        for rows in generate_batches(model, items, gen, options, args.batch_size, args.pad_multiple):
            for row in rows:
                shown = row["completion"] if row["completion"] is not None else row["completion_ids"]
                print(json.dumps(shown) if not isinstance(shown, str) else shown, flush=True)
        return 0
    done = 0
    if args.resume and out.exists():
        from dlm_jax.commands.jsonl_stream import check_resume, read_done

        rows_done = read_done(out)
        check_resume(out, rows_done, [record for record, _ in items])
        done = len(rows_done)
        if done == len(items):
            print(f"all {done} rows are already in {out}; nothing to do")
            return 0
        print(f"resuming {out}: {done} of {len(items)} rows done", file=sys.stderr)
    batches = generate_batches(model, items[done:], gen, options, args.batch_size, args.pad_multiple)
    return _write_streaming(out, batches, "a" if done else "w", done)
