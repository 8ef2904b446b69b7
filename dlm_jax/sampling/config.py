"""`GenerateConfig`: the frozen, validated set of sampler knobs (static under jit), and the one table of them.

Each field carries its help text, its parser (text or value -> value) and how its default reads in field
metadata; `KNOBS` is built from them. The `generate`, `chat` and `eval` flags, the lm-eval `model_args`
and the `effective_sampler` record of results are all generated from `KNOBS`, so a knob is added here
once and every front end has it, with the same default.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
LLADA_ALGS = ("low_confidence", "random")
ALGS = DREAM_ALGS + LLADA_ALGS + ("diffullama",)
CACHE_MODES = ("none", "prefix", "dual")
CACHE_REFRESH = ("block", "step")
DREAM_DEFAULT_TOP_K = 50  # what Dream's diffusion_generate applies when top_k is not passed (see resolve_top_k)

# (step, x, logits) -> x  /  (step, x, logits) -> logits; step is None for the call before the loop.
TokenHook = Callable[[Any, Any, Any], Any]
LogitsHook = Callable[[Any, Any, Any], Any]
StepCallback = Callable[[Any, Any], None]  # (step, canvas) on the host, numpy values


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()  # a knob a front end was not given (resolved per call; see `Knob.default`)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None


def _is_none(value: Any) -> bool:
    return value is None or str(value).strip().lower() == "none"


def _optional(cast: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        return None if _is_none(value) else cast(value)

    return parse


def parse_bool(value: Any) -> bool:
    """true/false, 1/0, yes/no (any case), or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false")


def parse_top_k(value: Any) -> int | None:
    """none (or 0): no top-k filter; else an integer >= 1."""
    if _is_none(value):
        return None
    try:
        k = _as_int(value)
    except ValueError:
        k = -1
    if k < 0:
        raise ValueError("expected an integer >= 1, or none (no top-k filter)")
    return k or None


def _parse_alg(value: Any) -> str:
    if str(value) not in ALGS:
        raise ValueError(f"expected one of {', '.join(ALGS)}")
    return str(value)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if str(value) not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return str(value)

    return parse


def parse_ids(value: Any) -> tuple[int, ...]:
    """Token ids: a list, or text separated by commas, semicolons or spaces ("5,6" or "5;6")."""
    items = value if isinstance(value, list | tuple) else [t for t in re.split(r"[,;\s]+", str(value)) if t]
    try:
        return tuple(_as_int(t) for t in items)
    except ValueError:
        raise ValueError("expected token ids like 5,6 (or 5;6 in model_args)") from None


def knob(default: Any, help: str, parse: Callable[[Any], Any] | None, shown: str | None = None, **extra: Any) -> Any:
    """A `GenerateConfig` field: `help` for users, `parse` (text or value -> value; None = settable from Python
    only), `shown` (how the default reads where it is resolved per call); `extra` may hold `user_default`."""
    metadata = {"help": help, "parse": parse, "shown": shown, **extra}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Every knob of the reverse process. Hashable, so one compiled sampler serves each config.

    Families of algorithms (one loop, one step function; `alg` picks the plug-in):
      - Dream: `origin` (reveal each mask with prob 1 - s/t), `maskgit_plus` (max prob),
        `topk_margin` (top1 - top2), `entropy` (negative entropy); `eps`, `alg_temp`, `top_p`, `top_k`.
      - LLaDA / SMDM: `low_confidence`, `random`, with `block_length` semi-autoregressive blocks,
        Gumbel-max at `temperature`, `cfg_scale` (classifier-free guidance, any alg).
      - DiffuLLaMA / DiffuGPT: `diffullama` (keep the `floor(n * t/T)` least confident positions masked);
        `logits_temp` divides the logits first; positions outside `src_mask` start masked.

    Extras: `forbid_mask_token` / `vocab_limit` (never predict the mask id or ids >= vocab_limit; off
    by default as in Dream), `suppress_tokens` (e.g. EOS), `per_row_count` (Dream's transfer count
    from each row's own masks instead of the batch mean), `token_hook` / `logits_hook`
    (pure callables `(step, x, logits)`; Dream's `generation_tokens_hook_func` / `..._logits_hook_func`).

    `steps` left out is `max_new_tokens`; `max_new_tokens` left out is 0 for `diffullama` (the canvas is
    the input) and required otherwise. Two knobs are resolved per call by the front ends (keywords of
    `DiffusionLM.diffusion_generate`, CLI flags, lm-eval model_args), never here: `alg` left unset there
    is `low_confidence` when `block_length` is given, else `origin`; `top_k` left unset there is
    Dream's effective 50 for Dream's algs (see `resolve_top_k`). A config built directly is the pure
    core's input and takes the field defaults as written (`top_k=None`: no filter).

    Block-wise decoding (`blockwise`; Fast-dLLM, EB-Sampler, Streaming-dLLM): the generation is decoded one
    `block_length` block at a time, left to right. Per step the alg's count (`steps / blocks` steps per block)
    or one parallel rule (`threshold`, `factor`, `entropy_budget`) picks the block's positions to commit;
    `cache` reuses K/V of the positions outside the block (refreshed per `cache_refresh`), `suffix_window`
    hides the far masked suffix, `early_exit` ends rows once an EOS is decoded. Masks inside the prompt
    stay as they are there.

    Python-only fields (no CLI flag, no model_arg): `output_history` (a return value, not a sampling
    choice), `step_callback` (`chat --live` sets it), `token_hook`, `logits_hook`.

    Example:
        >>> GenerateConfig(max_new_tokens=64, alg="entropy").transfer_mode
        'dream'
        >>> GenerateConfig(max_new_tokens=64, alg="entropy").steps
        64
    """

    max_new_tokens: int | None = knob(
        None,
        "new tokens to generate (masked positions after the prompt)",
        _as_int,
        "required (0 for diffullama, whose canvas is the input)",
    )
    steps: int | None = knob(None, "denoising steps (forward passes)", _as_int, "max-new-tokens")
    alg: str = knob(
        "origin",
        f"unmasking algorithm: {' | '.join(ALGS)}",
        _parse_alg,
        "low_confidence when block-length is given, else origin",
        user_default=None,
    )
    temperature: float = knob(0.0, "sampling temperature (0 = greedy)", _as_float)
    top_p: float | None = knob(None, "nucleus filter: keep the likeliest tokens up to this total probability",
                               _optional(_as_float), "none (no filter)")
    top_k: int | None = knob(
        None,
        "keep the K likeliest tokens; none (or 0): no filter",
        parse_top_k,
        f"{DREAM_DEFAULT_TOP_K} for Dream's algs (Dream's effective default), no filter otherwise",
        user_default=UNSET,
    )
    alg_temp: float | None = knob(None, "Dream: sample positions from softmax(confidence / alg-temp)",
                                  _optional(_as_float), "none (the most confident positions)")
    eps: float = knob(1e-3, "Dream: the last time of the schedule (timesteps = linspace(1, eps, steps + 1))",
                      _as_float)
    block_length: int | None = knob(None, "semi-autoregressive block length (LLaDA; any alg when decoding block-wise)",
                                    _optional(_as_int), "max-new-tokens (one block)")
    cfg_scale: float = knob(0.0, "classifier-free guidance weight (0 = none)", _as_float)
    logits_temp: float = knob(1.0, "DiffuLLaMA: divide the logits by this first", _as_float)
    output_history: bool = knob(False, "also return the canvas after every step", None)
    forbid_mask_token: bool = knob(False, "never predict the mask id", parse_bool)
    vocab_limit: int | None = knob(None, "never predict ids >= this", _optional(_as_int), "none (no limit)")
    suppress_tokens: tuple[int, ...] = knob((), "token ids never predicted (e.g. 5,6)", parse_ids, "none")
    per_row_count: bool = knob(False, "Dream: reveal each row's own count of masks per step, not the batch mean",
                               parse_bool)
    threshold: float | None = knob(None, "block-wise: commit every masked position of the block whose token "
                                   "probability is >= this, at least the most confident (Fast-dLLM)",
                                   _optional(_as_float), "none (the alg's count per step)")
    factor: float | None = knob(None, "block-wise: commit the n most confident positions while the n-th has "
                                "probability >= 1 - factor / (n + 1) (Fast-dLLM's factor rule)",
                                _optional(_as_float), "none")
    entropy_budget: float | None = knob(None, "block-wise: commit in confidence order while the summed entropy "
                                        "minus the largest stays <= this (EB-Sampler)", _optional(_as_float), "none")
    cache: str = knob("none", f"block-wise K/V cache: {' | '.join(CACHE_MODES)} (prefix: prompt and finished "
                      "blocks; dual: the masked suffix too)", _choice(CACHE_MODES))
    cache_refresh: str = knob("block", f"when the K/V cache is recomputed: {' | '.join(CACHE_REFRESH)} "
                              "(step: every step, exact but slow)", _choice(CACHE_REFRESH))
    suffix_window: int | None = knob(None, "block-wise: masked positions more than this past the current block "
                                     "are left out of attention (Streaming-dLLM/DPad)", _optional(_as_int),
                                     "none (the whole suffix)")
    early_exit: bool = knob(False, "block-wise: a row whose finished blocks hold an EOS ends; the rest of its "
                            "canvas becomes EOS", parse_bool)
    step_callback: StepCallback | None = knob(None, "(step, x) called on the host after each step (live views)",
                                              None)
    token_hook: TokenHook | None = knob(None, "(step, x, logits) -> x after each step", None)
    logits_hook: LogitsHook | None = knob(None, "(step, x, logits) -> logits before each step", None)

    def __post_init__(self) -> None:
        derived = []
        if self.alg not in ALGS:
            raise ValueError(f"alg={self.alg!r} is not one of {ALGS}")
        if self.max_new_tokens is None:
            if self.alg != "diffullama":
                raise ValueError(f"max_new_tokens is required for alg={self.alg!r} (an integer >= 1)")
            object.__setattr__(self, "max_new_tokens", 0)
            derived.append("max_new_tokens")
        if self.steps is None:
            if self.alg == "diffullama":
                raise ValueError("steps (DiffuLLaMA's diffusion_steps) is required for alg='diffullama'")
            object.__setattr__(self, "steps", self.max_new_tokens)
            derived.append("steps")
        object.__setattr__(self, "_derived", frozenset(derived))
        self._check_values()
        object.__setattr__(self, "suppress_tokens", tuple(int(t) for t in self.suppress_tokens))
        self._check_blockwise()
        if self.alg in LLADA_ALGS or (self.blockwise and self.parallel_rule is None):
            self._check_blocks()
        elif self.blockwise:
            self._check_block_length()
        elif self.block_length is not None:
            raise ValueError(
                f"block_length={self.block_length} is used by the Dream and LLaDA algs {DREAM_ALGS + LLADA_ALGS}, "
                f"not alg={self.alg!r}"
            )

    def _check_values(self) -> None:
        min_new = 0 if self.alg == "diffullama" else 1
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < min_new:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens!r} must be an integer >= {min_new} for alg={self.alg!r}"
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps={self.steps!r} must be an integer >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] or None")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k={self.top_k!r} must be an integer >= 1 or None")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise ValueError(f"alg_temp={self.alg_temp} must be >= 0 or None")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps={self.eps} must be in (0, 1)")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale={self.cfg_scale} must be >= 0 (0 = no guidance)")
        if self.logits_temp <= 0:
            raise ValueError(f"logits_temp={self.logits_temp} must be > 0")
        if self.vocab_limit is not None and self.vocab_limit < 1:
            raise ValueError(f"vocab_limit={self.vocab_limit} must be >= 1 or None")

    def _check_blockwise(self) -> None:
        rules = [name for name in ("threshold", "factor", "entropy_budget") if getattr(self, name) is not None]
        if len(rules) > 1:
            raise ValueError(f"pass at most one parallel decoding rule, got {' and '.join(rules)}")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold} must be in (0, 1] or None")
        if self.factor is not None and self.factor <= 0:
            raise ValueError(f"factor={self.factor} must be > 0 or None")
        if self.entropy_budget is not None and self.entropy_budget < 0:
            raise ValueError(f"entropy_budget={self.entropy_budget} must be >= 0 or None")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache={self.cache!r} is not one of {CACHE_MODES}")
        if self.cache_refresh not in CACHE_REFRESH:
            raise ValueError(f"cache_refresh={self.cache_refresh!r} is not one of {CACHE_REFRESH}")
        if self.suffix_window is not None and (not isinstance(self.suffix_window, int) or self.suffix_window < 0):
            raise ValueError(f"suffix_window={self.suffix_window!r} must be an integer >= 0 or None")
        if self.blockwise and self.alg == "diffullama":
            raise ValueError("block-wise decoding (cache, threshold, factor, entropy_budget, suffix_window, "
                             "early_exit) is not available for alg='diffullama'")
        if self.blockwise and self.has_hooks:
            raise ValueError("token_hook / logits_hook need the exact sampler; block-wise decoding (cache, "
                             "threshold, factor, entropy_budget, suffix_window, early_exit) does not call them")

    def _check_block_length(self) -> None:
        block = self.max_new_tokens if self.block_length is None else self.block_length
        if not isinstance(block, int) or not 1 <= block <= self.max_new_tokens or self.max_new_tokens % block:
            raise ValueError(
                f"block_length={self.block_length!r} must divide max_new_tokens={self.max_new_tokens} "
                f"(an integer in 1..{self.max_new_tokens})"
            )

    def _check_blocks(self) -> None:
        self._check_block_length()
        block = self.block_size
        blocks = self.max_new_tokens // block
        if self.steps % blocks:
            raise ValueError(f"steps={self.steps} must be a multiple of the number of blocks ({blocks})")
        if self.steps // blocks > block:
            raise ValueError(
                f"steps={self.steps} gives {self.steps // blocks} steps per block of {block} tokens; "
                f"allowed range is {blocks}..{blocks * block} (each step must reveal at least one token)"
            )

    @property
    def transfer_mode(self) -> str:
        """'dream', 'llada' or 'diffullama': which family's step schedule applies."""
        if self.alg in DREAM_ALGS:
            return "dream"
        return "llada" if self.alg in LLADA_ALGS else "diffullama"

    @property
    def block_size(self) -> int:
        """LLaDA block length (the whole generation when unset)."""
        return self.max_new_tokens if self.block_length is None else self.block_length

    @property
    def parallel_rule(self) -> str | None:
        """'threshold', 'factor' or 'entropy_budget' when one decides how many positions a step commits."""
        for name in ("threshold", "factor", "entropy_budget"):
            if getattr(self, name) is not None:
                return name
        return None

    @property
    def blockwise(self) -> bool:
        """Decoded block by block (`dlm_jax.sampling.blocks`): a cache, a parallel rule, a suffix window, early
        exit, or a Dream alg with `block_length`. LLaDA's own blocks alone keep the exact sampler."""
        return (
            self.cache != "none"
            or self.parallel_rule is not None
            or self.suffix_window is not None
            or self.early_exit
            or (self.alg in DREAM_ALGS and self.block_length is not None)
        )

    @property
    def has_hooks(self) -> bool:
        return self.token_hook is not None or self.logits_hook is not None

    def replace(self, **changes: Any) -> GenerateConfig:
        """A copy with `changes`; values this config derived (`steps` from `max_new_tokens`) are derived again.

        Example:
            >>> GenerateConfig(max_new_tokens=8).replace(max_new_tokens=16).steps
            16
        """
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._derived}
        return GenerateConfig(**{**given, **changes})


@dataclasses.dataclass(frozen=True)
class Knob:
    """One setting a front end can give: a `GenerateConfig` field, or an alias that sets one (`field`).

    `default` is the value every front end starts from: the field's default, except `alg` (None: chosen
    per call, see `resolve_alg`) and `top_k` (`UNSET`: see `resolve_top_k`); `shown` is how help texts
    write it. `parse` turns text (a flag, a model_arg) or a value into the setting; None marks a
    Python-only knob (hooks, `output_history`), which has no flag and no model_arg.
    """

    name: str
    help: str
    default: Any
    shown: str
    parse: Callable[[Any], Any] | None
    field: str

    @property
    def switch(self) -> bool:
        """A boolean knob: a CLI flag without a value."""
        return self.parse is parse_bool


def _field_knob(f: dataclasses.Field) -> Knob:
    meta = f.metadata
    default = meta.get("user_default", f.default)
    shown = meta["shown"] or ("none" if default is None else str(default).lower() if isinstance(default, bool)
                              else str(default))
    return Knob(f.name, meta["help"], default, shown, meta["parse"], f.name)


KNOBS: dict[str, Knob] = {f.name: _field_knob(f) for f in dataclasses.fields(GenerateConfig)}


def resolve_alg(alg: str | None, block_length: int | None) -> str:
    """The `alg` a call means when it names none: LLaDA's `low_confidence` with a `block_length`, else `origin`."""
    if alg is None:
        return "low_confidence" if block_length is not None else "origin"
    return alg


def resolve_top_k(top_k: Any, alg: str) -> int | None:
    """Dream's effective default: a call that does not pass `top_k` filters to the 50 best tokens.

    Dream-v0's `diffusion_generate` starts from the model's generation config, which carries
    transformers' `GenerationConfig` default `top_k=50`; the reference outputs in
    tests/data/parity/dream were produced that way. Passing `top_k=None` disables the filter (as
    in Dream). LLaDA and DiffuLLaMA have no top-k, so unset means none there.

    Example:
        >>> resolve_top_k(UNSET, "entropy"), resolve_top_k(UNSET, "low_confidence"), resolve_top_k(None, "entropy")
        (50, None, None)
    """
    if top_k is UNSET:
        return DREAM_DEFAULT_TOP_K if alg in DREAM_ALGS else None
    return top_k
