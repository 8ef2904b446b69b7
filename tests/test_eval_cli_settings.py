"""`dlm-jax eval` records the settings it ran with: the effective top_k (Dream's 50 unless --top-k none),
mc_batch_size = min(mc_num, 32); its results JSON is strict JSON and --output is never silently replaced."""

import json
import math

import hf_models
import pytest
from cli_checks import assert_one_line_error, run_cli

from dlm_jax.api import DiffusionLM
from dlm_jax.evaluation.estimator import Estimator
from dlm_jax.evaluation.generation import effective_sampler


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    """The tiny Dream checkpoint plus a word-level HF tokenizer whose ids match it (w0..w295 + specials)."""
    return hf_models.dream_with_word_tokenizer(data_dir, tmp_path_factory.mktemp("eval_settings") / "model")


def strict_load(path):
    def refuse(name):
        raise AssertionError(f"{path} holds bare {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_effective_top_k_is_recorded_and_used(model_dir, tmp_path, capsys, monkeypatch):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"name": f"w{i} w{i + 1}", "description": f"w{i + 9} w7"}) + "\n"
                             for i in (10, 20)))
    seen = []
    generate = DiffusionLM.diffusion_generate

    def spy(self, ids, mask=None, gen=None, **kwargs):
        seen.append(gen.top_k)
        return generate(self, ids, mask, gen, **kwargs)

    monkeypatch.setattr(DiffusionLM, "diffusion_generate", spy)
    base = ["eval", "--model", str(model_dir), "--tasks", "reverse_curse", "--data", f"reverse_curse={facts}",
            "--max-new-tokens", "4", "--steps", "2", "--alg", "entropy"]
    for extra, want in (([], 50), (["--top-k", "none"], None)):
        out = tmp_path / f"res_{want}.json"
        seen.clear()
        rc, _, err = run_cli([*base, *extra, "--output", str(out)], capsys)
        assert rc == 0, err
        res = strict_load(out)
        assert res["config"]["sampler"]["top_k"] == want
        assert res["configs"]["reverse_curse"]["generation_kwargs"]["top_k"] == want
        assert res["config"]["sampler"]["alg"] == "entropy" and res["config"]["sampler"]["eps"] == 1e-3  # as generate
        assert seen and set(seen) == {want}  # what ran is what was recorded
    # LLaDA's remasking has no top-k: unset means none there.
    assert effective_sampler({"alg": "low_confidence"})["top_k"] is None
    assert effective_sampler({"remasking": "random", "top_k": 7}) == effective_sampler({"alg": "random", "top_k": 7})


@pytest.mark.slow
def test_strict_json_default_mc_batch_and_output_refusal(model_dir, tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "val.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("w5 w6 w7 w8", "w9 w10 w11")))
    out = tmp_path / "ppl.json"
    argv = ["eval", "--model", str(model_dir), "--tasks", "perplexity", "--data", f"perplexity={corpus}",
            "--mc-num", "8", "--log-samples", "--output", str(out)]
    rc, printed, err = run_cli(argv, capsys)
    assert rc == 0, err
    res = strict_load(out)
    assert res["config"]["estimator"]["mc_batch_size"] == 8  # min(mc_num, 32): one round per request
    entry = res["results"]["perplexity"]
    ppl = entry["ppl_upper_bound,none"]
    assert math.isfinite(ppl) and ppl > 1
    assert entry["ppl_upper_bound_stderr,none"] is None  # one Monte-Carlo round: no spread to measure
    assert "mc_num / mc_batch_size" in entry["null_reasons"]["ppl_upper_bound_stderr,none"]
    assert all(s["stderr"] is None and "null_reasons" in s for s in res["samples"]["perplexity"])
    assert "perplexity:" in printed and "NaN" not in printed

    before = out.read_text()
    assert_one_line_error(argv, capsys, contains=[f"--output {out} exists", "--overwrite"])
    assert out.read_text() == before
    # --overwrite replaces it; with --wandb-project and no API key the metrics go to an offline run.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    rc, _, err = run_cli([*argv, "--overwrite", "--mc-num", "16", "--wandb-project", "dlm-jax-test"], capsys)
    assert rc == 0, err
    assert strict_load(out)["config"]["estimator"]["mc_batch_size"] == 16
    assert "no API key" in err and "logging offline" in err
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_mc_batch_size_default_and_the_harness_record(model_dir):
    assert Estimator(mc_num=8).mc_batch_size == 8
    assert Estimator(mc_num=128).mc_batch_size == 32
    assert Estimator(mc_num=64, mc_batch_size=16).mc_batch_size == 16
    from dlm_jax.evaluation.harness import DLMJaxLM

    lm = DLMJaxLM(pretrained=str(model_dir), mc_num=8, alg="entropy")
    info = lm.get_model_info()
    assert info["estimator"]["mc_batch_size"] == 8 and info["sampler"]["top_k"] == 50
    off = DLMJaxLM(pretrained=str(model_dir), top_k=None)  # model_args top_k=none
    assert off.get_model_info()["sampler"]["top_k"] is None
    assert DLMJaxLM(pretrained=str(model_dir), top_k=5).get_model_info()["sampler"]["top_k"] == 5
