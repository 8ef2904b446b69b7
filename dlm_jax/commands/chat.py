"""`dlm-jax chat`: multi-turn chat with a live view of the canvas as the model denoises it, step by step."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

from dlm_jax.commands.generate import (
    add_sampler_arguments,
    call_options,
    default_max_new_tokens,
    load_model,
    open_tokenizer,
    template_ids,
)

EXAMPLE = """example:
  dlm-jax chat --model Dream-v0-Instruct-7B --max-new-tokens 128 --steps 128 --alg entropy --temperature 0.2
  printf 'hello\\nand again\\n' | dlm-jax chat --model my_model --no-live     # turns from stdin
  dlm-jax chat --model dream7b_jax --tokenizer Dream-v0-Instruct-7B   # the tokenizer of another folder
Type a message and press enter; an empty line, /exit or end of input quits, /reset clears the history.
"""

MASK_GLYPH = "\u2591"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a diffusion LM, watching each denoising step",
        description="Chat using the tokenizer's chat template. The whole reverse process runs in one compiled "
        "call; the live view shows the canvas after every step while it runs (a host callback per step).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sampler_arguments(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument(
        "--live", action=argparse.BooleanOptionalAction, default=None, help="live canvas (default: on a TTY)"
    )
    p.add_argument("--delay", type=float, default=0.0, help="pause (seconds) after each step shown in the live view")
    p.set_defaults(func=run)


def render_canvas(tokenizer: Any, ids: list[int], mask_id: int):
    """A rich Text of the generated region: each run of decoded tokens in bold, masks as shaded blocks."""
    from rich.text import Text

    text = Text()
    run: list[int] = []
    for token in [*ids, None]:
        if token is not None and token != mask_id:
            run.append(token)
            continue
        if run:
            text.append(tokenizer.decode(run, skip_special_tokens=False), style="bold")
            run = []
        if token is not None:
            text.append(MASK_GLYPH, style="dim")
    return text


class LiveCanvas:
    """The sampler's `step_callback` for the live view: draws the generated region after each step as it runs.

    On a terminal the frames replace each other in a rich `Live` view (`view`); elsewhere (piped output)
    each frame is printed on its own line. `start` is the prompt length of the current turn.
    """

    def __init__(self, console: Any, tokenizer: Any, mask_id: int, delay: float) -> None:
        self.console, self.tokenizer, self.mask_id, self.delay = console, tokenizer, mask_id, delay
        self.view: Any = None
        self.start = 0

    def __call__(self, step: Any, x: Any) -> None:
        frame = render_canvas(self.tokenizer, [int(t) for t in x[0, self.start :]], self.mask_id)
        if self.view is not None:
            self.view.update(frame)
        else:
            self.console.print(frame, highlight=False)
        if self.delay:
            time.sleep(self.delay)


def read_turns(stream) -> Iterator[str]:
    """User turns: prompted lines on a TTY, plain lines otherwise; stops at EOF, an empty line or /exit."""
    interactive = stream.isatty()
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = stream.readline()
        if not line or not line.strip() or line.strip() == "/exit":
            return
        yield line.rstrip("\n")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from dlm_jax.commands.sampler_flags import given_flags, sampler_settings
    from dlm_jax.sampling.frontend import build_config

    given_flags(args)  # a bad sampler flag fails before the model loads
    tokenizer = open_tokenizer(args.model, args.tokenizer, needed=True)
    if not tokenizer.chat_template:
        source = args.tokenizer or args.model
        raise ValueError(f"the tokenizer in {source} has no chat template; pass --tokenizer PATH to one that has")
    model = load_model(args)
    mask_id = model.config.require_mask_token()
    console = Console()
    live = sys.stdout.isatty() if args.live is None else args.live
    canvas = LiveCanvas(console, tokenizer, mask_id, args.delay)
    settings = sampler_settings(args, model.config.eos_token_id, tokenizer)
    settings["step_callback"] = canvas if live else None
    options = call_options(args, tokenizer)
    base = [] if args.system is None else [{"role": "system", "content": args.system}]
    messages = list(base)
    for turn in read_turns(sys.stdin):
        if turn.strip() == "/reset":
            messages = list(base)
            console.print("[dim](history cleared)[/dim]")
            continue
        messages.append({"role": "user", "content": turn})
        prompt = template_ids(tokenizer, messages)
        context = model.config.max_position_embeddings
        new = settings.get("max_new_tokens") or default_max_new_tokens(args.model, context, len(prompt))
        gen = build_config({**settings, "max_new_tokens": new})
        canvas.start = len(prompt)
        if live and console.is_terminal:
            with Live(console=console, refresh_per_second=30, transient=True) as view:
                canvas.view = view
                out = model.diffusion_generate([prompt], gen=gen, **options)
            canvas.view = None
        else:
            out = model.diffusion_generate([prompt], gen=gen, **options)
        reply = out.texts[0]
        console.print(f"assistant> {reply}", markup=False, highlight=False)
        cost = f"{int(out.nfe[0])} forward passes, {float(out.forward_equivalents[0]):.1f} full-canvas equivalents"
        console.print(f"[dim]({cost}, {float(out.tokens_per_step[0]):.2f} tokens per step)[/dim]")
        messages.append({"role": "assistant", "content": reply})
    return 0
