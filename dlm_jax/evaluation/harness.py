"""lm-evaluation-harness backend `dlm_jax`: diffusion likelihoods and diffusion generation for lm-eval tasks.

Importing this module registers the model name `dlm_jax` with `lm_eval.api.registry`. lm-eval
0.4.x has no plugin entry point for models, so the plain `lm_eval` CLI cannot see it; run the
harness through this module instead, which registers the model and then hands over to lm-eval's
own CLI (same arguments):

    python -m dlm_jax.evaluation.harness --model dlm_jax \\
        --model_args pretrained=dream7b_jax,estimator=elbo,mc_num=128,steps=256,alg=entropy \\
        --tasks hellaswag,gsm8k --batch_size 8 --output_path results/

In Python: `import dlm_jax.evaluation.harness` then `lm_eval.simple_evaluate(model="dlm_jax", ...)`.

`loglikelihood` uses the chosen estimator (`estimator=elbo|elbo_llada|chain`); `is_greedy` comes
from the chain rule, or from LLaDA's greedy decode check for the ELBOs (`greedy_check=True`).
`loglikelihood_rolling` scores every token once, in lm-eval's rolling windows of `max_length - 1`
targets (the first conditioned on the prefix token, a short last window on the tokens before it),
and sums `rolling_estimator` scores per window: `elbo` (default) gives a lower bound on the
log-likelihood (perplexity upper bound), `chain` the exact log-likelihood of the model's
left-to-right factorisation (one pass per token).
"""

from __future__ import annotations

import inspect
import json
import pathlib
import sys
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from dlm_jax.evaluation.estimator import Estimator
from dlm_jax.evaluation.generation import effective_sampler, generate_continuations
from dlm_jax.sampling.config import parse_bool
from dlm_jax.sampling.frontend import PUBLIC, canonical_settings, check_names, parse_settings

# model_args names from before the sampler's knobs kept their own names; they still work.
RENAMED = {"gen_eps": "eps", "gen_cfg": "cfg_scale"}
MAX_NEW_TOKENS = 256  # new tokens when neither the task (max_gen_toks) nor model_args max_new_tokens say


def _as_bool(name: str, value: Any) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError(f"model_args {name}={value!r} must be true or false") from None


def _opt(value: Any, cast):
    return None if value is None or str(value).lower() == "none" else cast(value)


def _model_arg_label(name: str, value: Any) -> str:
    return f"model_args {name}={value!r}"


def sampler_model_args(args: dict[str, Any], known: list[str]) -> dict[str, Any]:
    """The sampler settings in lm-eval model_args: every public `GenerateConfig` knob by its name (or an alias:
    `remasking`, `suppress_eos`, or the older `gen_eps` / `gen_cfg`), parsed from text. A name that is neither
    a knob nor in `known` (the other model_args) is one error naming it and the closest names."""
    check_names(args, [*known, *PUBLIC, *RENAMED], "model_args name")
    for old, new in RENAMED.items():
        if old in args and new in args:
            raise ValueError(f"model_args {old} and {new} name the same setting; pass {new} only")
    settings = {RENAMED.get(name, name): value for name, value in args.items()}
    return parse_settings(settings, _model_arg_label)


@register_model("dlm_jax")
class DLMJaxLM(TemplateLM):
    """lm-eval model backed by a `DiffusionLM` (HF folder or dlm_jax checkpoint).

    model_args (all optional except `pretrained`):
      pretrained, tokenizer (default: pretrained), dtype, mask_token_id, logit_shift, attention_impl, mesh (a device
      mesh, e.g. `fsdp=4,tensor=2` written `mesh=fsdp=4;tensor=2` since model_args split at commas);
      likelihood: estimator (elbo|elbo_llada|chain), mc_num, mc_batch_size, mc_eps (the estimator's minimum
      mask ratio), cfg (CFG scale), greedy_check, rolling_estimator, batch_size (requests per call),
      max_length, seed, add_bos_token;
      generation: every `GenerateConfig` knob by its name (max_new_tokens, steps, alg, temperature, top_p,
      top_k, alg_temp, eps, block_length, cfg_scale, logits_temp, forbid_mask_token, vocab_limit,
      suppress_tokens as `5;6`, per_row_count), the aliases remasking and suppress_eos, the older names
      gen_eps (= eps) and gen_cfg (= cfg_scale), and gen_batch_size. Unset knobs take `GenerateConfig`'s
      defaults, as in `dlm-jax generate` and `dlm-jax eval`: `alg` origin (low_confidence with a
      block_length), `top_k` Dream's effective 50 for Dream's algs (`top_k=none` turns the filter off).
      `max_new_tokens` is used when a task gives no max_gen_toks (default 256).
    `mc_batch_size` defaults to min(mc_num, 32). `get_model_info` (lm-eval's results["config"])
    records the effective sampler settings.

    Example:
        >>> from lm_eval.api.instance import Instance
        >>> from dlm_jax.api import DiffusionLM
        >>> from dlm_jax.data.tokenizer import SimpleTokenizer
        >>> from dlm_jax.models.config import ModelConfig
        >>> tok = SimpleTokenizer.build(["the sky is blue ."])
        >>> model = DiffusionLM.init(ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                                      intermediate_size=64, mask_token_id=tok.mask_id))
        >>> _ = model.save_pretrained("tiny_model"); tok.save_pretrained("tiny_model")
        >>> lm = DLMJaxLM(pretrained="tiny_model", estimator="chain")
        >>> [(loglik, is_greedy)] = lm.loglikelihood([Instance("loglikelihood", {}, ("the sky is", " blue ."), 0)])
        >>> round(loglik, 1), is_greedy  # an untrained model: about -log(64) = -4.16 a token
        (-8.4, False)

        lm-eval's own tasks (their datasets are downloaded by lm-eval) run through `simple_evaluate`:

        >>> import lm_eval
        >>> lm_eval.simple_evaluate(model="dlm_jax", model_args="pretrained=tiny_model,mc_num=64",
        ...                         tasks=["piqa"])  # doctest: +SKIP
    """

    def __init__(
        self,
        pretrained: str,
        tokenizer: str | None = None,
        dtype: str = "float32",
        estimator: str = "elbo",
        mc_num: int = 128,
        mc_batch_size: int | None = None,
        mc_eps: float = 1e-3,
        cfg: float = 0.0,
        greedy_check: bool = True,
        rolling_estimator: str = "elbo",
        batch_size: int | str = 8,
        max_length: int | None = None,
        seed: int = 0,
        add_bos_token: bool = False,
        gen_batch_size: int | None = None,
        mask_token_id: int | None = None,
        logit_shift: bool | None = None,
        attention_impl: str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,
        mesh: str | None = None,
        **sampler: Any,
    ):
        super().__init__()
        from dlm_jax.api import DiffusionLM
        from dlm_jax.data.tokenizer import HFTokenizer, has_tokenizer, load_tokenizer

        own = [name for name in inspect.signature(DLMJaxLM.__init__).parameters if name not in ("self", "sampler")]
        settings = sampler_model_args(sampler, own)
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size='auto' is not supported by dlm_jax; give an integer (requests per call)")
        overrides: dict[str, Any] = {}
        if mask_token_id is not None:
            overrides["mask_token_id"] = int(mask_token_id)
        if logit_shift is not None:
            overrides["logit_shift"] = _as_bool("logit_shift", logit_shift)
        if attention_impl is not None:
            overrides["attention_impl"] = str(attention_impl)
        if tokenizer is None and pathlib.Path(pretrained).is_dir() and not has_tokenizer(pretrained):
            raise FileNotFoundError(f"no tokenizer in {pretrained}: pass tokenizer=PATH in --model_args")
        mesh = None if mesh is None else str(mesh).replace(";", ",")
        self.model = DiffusionLM.from_pretrained(pretrained, dtype=dtype, mesh=mesh, **overrides)
        self.dlm_tokenizer = load_tokenizer(tokenizer or pretrained, mask_token_id=self.model.config.mask_token_id)
        self.tokenizer = self.dlm_tokenizer.tok if isinstance(self.dlm_tokenizer, HFTokenizer) else None
        self._tokenizer_name = str(tokenizer or pretrained)
        self.batch_size = int(batch_size)
        self.estimator = Estimator(
            kind=str(estimator),
            mc_num=int(mc_num),
            mc_batch_size=_opt(mc_batch_size, int),
            eps=float(mc_eps),
            cfg_scale=float(cfg),
            greedy_check=_as_bool("greedy_check", greedy_check),
            batch_size=self.batch_size,
            seed=int(seed),
        )
        self.rolling = Estimator(**{**self.estimator.to_dict(), "kind": str(rolling_estimator), "greedy_check": False})
        self.max_length = int(max_length) if max_length is not None else self.model.config.max_position_embeddings
        self.add_bos_token = _as_bool("add_bos_token", add_bos_token)
        self.sampler = canonical_settings(settings, self.model.config.eos_token_id)
        self.max_new_tokens = self.sampler.pop("max_new_tokens", MAX_NEW_TOKENS)
        self.gen_batch_size = int(gen_batch_size) if gen_batch_size is not None else self.batch_size
        self.seed = int(seed)
        self.model_args = {
            "pretrained": str(pretrained),
            "tokenizer": self._tokenizer_name,
            "dtype": dtype,
            **overrides,
            **({} if mesh is None else {"mesh": mesh}),
        }

    # ---- lm-eval plumbing ----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.model.config.eos_token_id
        return int(eos if eos is not None else self.dlm_tokenizer.eos_id)

    @property
    def prefix_token_id(self) -> int:
        bos = self.model.config.bos_token_id
        if bos is None:
            bos = getattr(self.dlm_tokenizer, "bos_id", None)
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self._tokenizer_name.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        return self.dlm_tokenizer.chat_prompt(chat_history)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = list(self.dlm_tokenizer.encode(string))
        if (self.add_bos_token if add_special_tokens is None else add_special_tokens) and self.prefix_token_id >= 0:
            ids = [self.prefix_token_id] + ids
        return ids

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in lm-eval's results["config"]: model, estimator and sampler settings, provenance."""
        from dlm_jax.evaluation.results import provenance

        return {
            "dlm_jax_model_args": self.model_args,
            "model_config": self.model.config.to_dict(),
            "estimator": self.estimator.to_dict(),
            "rolling_estimator": self.rolling.to_dict(),
            "sampler": {
                **effective_sampler(self.sampler),
                "max_new_tokens": self.max_new_tokens,
                "batch_size": self.gen_batch_size,
            },
            "max_length": self.max_length,
            **{f"dlm_jax_{k}" if k in ("git_hash", "date") else k: v for k, v in provenance().items()},
        }

    # ---- scoring -------------------------------------------------------------------------------
    def _fit(self, context: list[int], target: list[int], what: str) -> list[int]:
        if len(target) >= self.max_length:
            raise ValueError(
                f"{what}: the target has {len(target)} tokens but the context holds max_length={self.max_length} "
                "(at least one prompt token is needed); raise max_length or shorten the target"
            )
        return context[-(self.max_length - len(target)) :] if len(context) + len(target) > self.max_length else context

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        prompts, targets = [], []
        for i, (_, ctx, cont) in enumerate(requests):
            prompts.append(self._fit(list(ctx), list(cont), f"loglikelihood request {i}"))
            targets.append(list(cont))
        scores = self.estimator.score(
            self.model.params, self.model.config, prompts, targets, max_length=self.max_length, call=self.model.call
        )
        out = [(s.loglik, s.is_greedy) for s in scores]
        for (key, _, _), res in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        prompts, targets, owner = [], [], []
        for i, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0], add_special_tokens=False)
            windows = get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length - 1, context_len=1
            )
            for ctx, cont in map(make_disjoint_window, windows):
                prompts.append(list(ctx))
                targets.append(list(cont))
                owner.append(i)
        scores = self.rolling.score(
            self.model.params, self.model.config, prompts, targets, max_length=self.max_length, call=self.model.call
        )
        totals = [0.0] * len(requests)
        for i, s in zip(owner, scores, strict=True):
            totals[i] += s.loglik
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(requests)
        for key, idx in tqdm(groups.items(), desc="generate_until", disable=disable_tqdm):
            kwargs = dict(json.loads(key))
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_new_tokens))
            sampler = dict(self.sampler)
            if not kwargs.pop("do_sample", True):
                sampler["temperature"] = 0.0
            task_knobs = {name: kwargs.pop(name) for name in ("temperature", "top_p", "top_k") if name in kwargs}
            sampler.update(parse_settings(task_knobs, lambda name, value: f"generation_kwargs {name}={value!r}"))
            prompts = []
            for i in idx:
                ids = self.tok_encode(requests[i].args[0])
                prompts.append(self._fit(ids, [0] * max_new, f"generate_until request {i}"))
            texts = generate_continuations(
                self.model,
                self.dlm_tokenizer,
                prompts,
                max_new_tokens=max_new,
                sampler=sampler,
                batch_size=self.gen_batch_size,
                seed=self.seed,
                stops=until,
            )
            for i, text in zip(idx, texts, strict=True):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI with the `dlm_jax` model registered (arguments as for `lm_eval`)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
