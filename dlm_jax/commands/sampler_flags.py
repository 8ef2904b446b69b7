"""The sampler flags of `generate`, `chat` and `eval`, generated from `GenerateConfig`'s knobs (one flag per knob).

Flags keep the knob's name with dashes (`top_k` -> `--top-k`); a flag left out stays unset, so the default
is the knob's own (`GenerateConfig`), the same for every command and for the Python call.
"""

from __future__ import annotations

import argparse
from typing import Any

from dlm_jax.sampling.config import UNSET, Knob
from dlm_jax.sampling.frontend import PUBLIC, SETTINGS, canonical_settings, parse_settings


def flag(name: str) -> str:
    """`--top-k` for the knob `top_k`."""
    return "--" + name.replace("_", "-")


def cli_knobs() -> list[Knob]:
    """The knobs that have a flag: every knob and alias settable from text (not the Python-only ones)."""
    return [SETTINGS[name] for name in PUBLIC]


def add_sampler_flags(parser: argparse.ArgumentParser, defaults: dict[str, str] | None = None) -> None:
    """Add one flag per public knob, plus `--forbid-special`, in a "sampler" group.

    `defaults` rewords a default a command resolves itself (e.g. `max_new_tokens`: "the task's own").
    """
    group = parser.add_argument_group("sampler (GenerateConfig; unset flags take its defaults)")
    for knob in cli_knobs():
        shown = (defaults or {}).get(knob.name, knob.shown)
        text = f"{knob.help} (default: {shown})"
        if knob.switch:
            group.add_argument(flag(knob.name), dest=knob.name, action="store_const", const=True, default=UNSET,
                               help=text)
        else:
            group.add_argument(flag(knob.name), dest=knob.name, default=UNSET, metavar=knob.name.upper(), help=text)
    group.add_argument(
        "--forbid-special", action="store_true", help="never predict the mask id or ids beyond the tokenizer "
        "(--forbid-mask-token plus --vocab-limit of the tokenizer's size)"
    )


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler flags the user gave, parsed (knob or alias name -> value); a bad value is one ValueError
    naming the flag, e.g. `--top-k '-3': expected an integer >= 1, or none (no top-k filter)`."""
    raw = {knob.name: getattr(args, knob.name) for knob in cli_knobs() if getattr(args, knob.name) is not UNSET}
    return parse_settings(raw, lambda name, value: f"{flag(name)} {value!r}")


def sampler_settings(args: argparse.Namespace, eos_token_id: int | None, tokenizer: Any | None) -> dict[str, Any]:
    """The settings the flags describe, keyed by `GenerateConfig` field (aliases applied, unset knobs absent)."""
    settings = canonical_settings(given_flags(args), eos_token_id)
    if args.forbid_special:
        settings["forbid_mask_token"] = True
        if tokenizer is not None:
            settings["vocab_limit"] = len(tokenizer)
    return settings
