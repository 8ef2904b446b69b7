"""Every sampler knob comes from `GenerateConfig`: each public one is a flag of `generate`, `chat` and `eval`, a
model_arg of the lm-eval backend and a keyword of `diffusion_generate`, with the same default everywhere, and a
value given through any of them is what the sampler receives. Python-only knobs (hooks, output_history) are not
flags or model_args, by design."""

import io
import json
import types

import hf_models
import numpy as np
import pytest
from cli_checks import run_cli

from dlm_jax.api import DiffusionLM
from dlm_jax.cli import build_parser
from dlm_jax.evaluation.tasks import TASK_SAMPLERS
from dlm_jax.sampling import frontend
from dlm_jax.sampling.config import KNOBS, UNSET, GenerateConfig

TEMPLATE = "{% for m in messages %}w1 {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w3{% endif %}"
EOS = 296
PYTHON_ONLY = {"output_history", "step_callback", "token_hook", "logits_hook"}
# A value other than the default for every public knob (three sets: block_length and remasking need LLaDA's algs,
# and the parallel decoding rules exclude each other).
DREAM_VALUES = {
    "max_new_tokens": 4, "steps": 2, "alg": "entropy", "temperature": 0.5, "top_p": 0.9, "top_k": 7, "alg_temp": 0.3,
    "eps": 0.01, "cfg_scale": 0.5, "logits_temp": 0.8, "forbid_mask_token": True, "vocab_limit": 290,
    "suppress_tokens": (5, 6), "per_row_count": True, "suppress_eos": True, "entropy_budget": 0.5,
}
LLADA_VALUES = {"max_new_tokens": 4, "steps": 2, "remasking": "random", "block_length": 2, "threshold": 0.8,
                "cache": "dual", "cache_refresh": "step", "suffix_window": 3, "early_exit": True}
FAST_VALUES = {"max_new_tokens": 4, "alg": "maskgit_plus", "block_length": 2, "factor": 2.0, "cache": "prefix"}
EXPECTED = {
    "dream": GenerateConfig(max_new_tokens=4, steps=2, alg="entropy", temperature=0.5, top_p=0.9, top_k=7,
                            alg_temp=0.3, eps=0.01, cfg_scale=0.5, logits_temp=0.8, forbid_mask_token=True,
                            vocab_limit=290, suppress_tokens=(5, 6, EOS), per_row_count=True, entropy_budget=0.5),
    "llada": GenerateConfig(max_new_tokens=4, steps=2, alg="random", block_length=2, threshold=0.8, cache="dual",
                            cache_refresh="step", suffix_window=3, early_exit=True),
    "fast": GenerateConfig(max_new_tokens=4, alg="maskgit_plus", block_length=2, factor=2.0, cache="prefix", top_k=50),
}
VALUES = {"dream": DREAM_VALUES, "llada": LLADA_VALUES, "fast": FAST_VALUES}


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    """The tiny Dream checkpoint plus a word-level tokenizer (w0..w295 + specials, EOS 296) with a chat template,
    and a two-fact file for the reverse_curse task."""
    folder = hf_models.dream_with_word_tokenizer(data_dir, tmp_path_factory.mktemp("settings") / "model", TEMPLATE)
    facts = folder.parent / "facts.jsonl"
    facts.write_text("".join(json.dumps({"name": f"w{i} w{i + 1}", "description": f"w{i + 9} w7"}) + "\n"
                             for i in (10, 20)))
    return folder


class Sampled(Exception):
    """Raised by the spy in place of sampling: the test only needs the config the sampler would receive."""


@pytest.fixture
def received(monkeypatch):
    """The GenerateConfig of each call that reaches the sampler (`frontend.run`), which then stops the command."""
    seen = []

    def spy(params, model_config, input_ids, attention_mask, gen, **options):
        seen.append(gen)
        raise Sampled

    monkeypatch.setattr(frontend, "run", spy)
    return seen


def flags(values):
    out = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        else:
            out += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return out


def model_args(values):
    return ",".join(f"{k}={';'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in values.items())


def through_generate(model_dir, values, capsys, monkeypatch):
    run_cli(["generate", "--model", str(model_dir), "--prompt", "w5 w6", *flags(values)], capsys)


def through_chat(model_dir, values, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("w5 w6\n"))
    run_cli(["chat", "--model", str(model_dir), "--no-live", *flags(values)], capsys)


def through_eval(model_dir, values, capsys, monkeypatch):
    facts = model_dir.parent / "facts.jsonl"
    run_cli(["eval", "--model", str(model_dir), "--tasks", "reverse_curse", "--data", str(facts), *flags(values)],
            capsys)


def through_harness(model_dir, values, capsys, monkeypatch):
    from dlm_jax.evaluation.harness import DLMJaxLM

    new = values.get("max_new_tokens", 4)
    rest = {k: v for k, v in values.items() if k != "max_new_tokens"}
    lm = DLMJaxLM.create_from_arg_string(model_args({"pretrained": model_dir, **rest}))
    lm.generate_until([types.SimpleNamespace(args=("w5 w6", {"until": ["."], "max_gen_toks": new}))])


def through_python(model_dir, values, capsys, monkeypatch):
    DiffusionLM.from_pretrained(model_dir).diffusion_generate(np.array([[5, 6]]), **values)


FRONT_ENDS = {"generate": through_generate, "chat": through_chat, "eval": through_eval,
              "harness": through_harness, "python": through_python}


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_every_front_end_starts_from_the_same_defaults(front_end, model_dir, received, capsys, monkeypatch):
    with pytest.raises(Sampled):
        FRONT_ENDS[front_end](model_dir, {"max_new_tokens": 4}, capsys, monkeypatch)
    gen = received[-1]
    # GenerateConfig's own defaults, with the two per-call ones resolved: alg origin and Dream's top_k of 50;
    # eval's reverse_curse task (the vehicle here) starts from its own sampler (the demo's) instead.
    resolved = {"max_new_tokens": 4, "steps": 4, "alg": "origin", "top_k": 50}
    if front_end == "eval":
        resolved.update(TASK_SAMPLERS["reverse_curse"], top_k=None)
    for name, knob in KNOBS.items():
        assert getattr(gen, name) == resolved.get(name, knob.default), name


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("family", ["dream", "llada", "fast"])
def test_a_value_given_through_any_front_end_reaches_the_sampler(front_end, family, model_dir, received, capsys,
                                                                   monkeypatch):
    with pytest.raises(Sampled):
        FRONT_ENDS[front_end](model_dir, VALUES[family], capsys, monkeypatch)
    assert received[-1] == EXPECTED[family]


def test_each_public_knob_is_a_flag_model_arg_and_keyword_and_python_only_ones_are_not():
    public = {name for name, knob in KNOBS.items() if knob.parse is not None}
    assert public == set(KNOBS) - PYTHON_ONLY
    assert set(DREAM_VALUES) | set(LLADA_VALUES) | set(FAST_VALUES) == public | {"remasking", "suppress_eos"}
    sub = build_parser()._subparsers._group_actions[0].choices
    for command in ("generate", "chat", "eval"):
        options = {o for action in sub[command]._actions for o in action.option_strings}
        for name in KNOBS:
            assert (f"--{name.replace('_', '-')}" in options) == (name in public), (command, name)
        args = sub[command].parse_args(["--model", "m", "--tasks", "t"] if command == "eval" else ["--model", "m"])
        assert all(getattr(args, name) is UNSET for name in public)  # unset: GenerateConfig's default applies
    from dlm_jax.evaluation.harness import sampler_model_args

    parsed = sampler_model_args({"top_k": "none", "suppress_tokens": "5;6", "per_row_count": "true"}, [])
    assert parsed == {"top_k": None, "suppress_tokens": (5, 6), "per_row_count": True}
    with pytest.raises(ValueError, match=r"unknown model_args name 'output_history'"):
        sampler_model_args({"output_history": True}, [])


def test_estimator_eps_has_its_own_name(model_dir):
    sub = build_parser()._subparsers._group_actions[0].choices
    args = sub["eval"].parse_args(["--model", "m", "--tasks", "t", "--eps", "0.01", "--mc-eps", "0.05"])
    assert (args.eps, args.mc_eps) == ("0.01", 0.05)  # the sampler's eps (parsed with the other knobs), the ELBO's
    from dlm_jax.evaluation.harness import DLMJaxLM

    lm = DLMJaxLM(pretrained=str(model_dir), mc_eps=0.05, gen_eps=0.01, gen_cfg=0.5)  # older names still work
    assert lm.estimator.eps == 0.05 and lm.sampler == {"eps": 0.01, "cfg_scale": 0.5}
    info = lm.get_model_info()
    assert info["sampler"]["eps"] == 0.01 and info["estimator"]["eps"] == 0.05
    with pytest.raises(ValueError, match="model_args gen_eps and eps name the same setting"):
        DLMJaxLM(pretrained=str(model_dir), eps=0.01, gen_eps=0.02)


def test_unknown_names_are_refused_with_the_closest_ones(model_dir):
    model = DiffusionLM.from_pretrained(model_dir)
    with pytest.raises(TypeError, match=r"unknown diffusion_generate keyword 'tmperature' \(did you mean temperature"):
        model.diffusion_generate(np.array([[5, 6]]), max_new_tokens=4, tmperature=1.0)
    from dlm_jax.evaluation.harness import DLMJaxLM

    with pytest.raises(ValueError, match=r"unknown model_args name 'mc_nm' \(did you mean mc_num"):
        DLMJaxLM(pretrained=str(model_dir), mc_nm=8)


def test_a_ready_config_takes_overrides_and_derives_steps_again(model_dir, received):
    model = DiffusionLM.from_pretrained(model_dir)
    gen = GenerateConfig(max_new_tokens=4, alg="entropy")
    with pytest.raises(Sampled):
        model.diffusion_generate(np.array([[5, 6]]), gen=gen, max_new_tokens=8, remasking="low_confidence")
    assert received[-1] == GenerateConfig(max_new_tokens=8, steps=8, alg="low_confidence")
    assert gen.replace(steps=2).replace(max_new_tokens=6).steps == 2  # a steps that was given stays
