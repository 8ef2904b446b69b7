"""The user's chain on the shipped configs: `dlm-jax train` -> `generate` -> `eval`, each a separate command
on the run's model folder alone (no options telling eval what the run trained on)."""

import itertools
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from dlm_jax.api import DiffusionLM
from dlm_jax.data import pipeline
from dlm_jax.data.tasks import reverse_curse_facts
from dlm_jax.data.tokenizer import load_tokenizer
from dlm_jax.evaluation.scorers import answer_matches, sudoku_valid
from dlm_jax.experiments import reverse_curse
from dlm_jax.training.config import load_experiment

pytestmark = pytest.mark.slow
TINY_MDM = "configs/experiments/tiny_mdm.yaml"
SUDOKU_SFT = "configs/experiments/sudoku_sft.yaml"


def dlm(*argv) -> str:
    """`dlm-jax ARGV` as a user runs it (own process, one CPU device); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-m", "dlm_jax.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, f"dlm-jax {argv[0]} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("chain") / "tiny_mdm"
    dlm("train", "--config", TINY_MDM, "--out", run)  # as shipped
    return run / "model"


def test_train_exports_a_folder_that_carries_its_tokenizer_and_task(tiny_run):
    from transformers import AutoTokenizer

    exp = load_experiment(TINY_MDM, [])
    built = pipeline.build_tokenizer(exp.data, pipeline.load_records(exp.data, "train"))
    hf = AutoTokenizer.from_pretrained(str(tiny_run), local_files_only=True)
    fact = reverse_curse_facts(exp.data.options["num_facts"], seed=exp.data.task_seed)[0]
    assert hf.encode(fact.forward_text, add_special_tokens=False) == built.encode(fact.forward_text)
    assert (hf.mask_token_id, hf.eos_token_id, len(hf)) == (built.mask_id, built.eos_id, built.vocab_size)
    record = json.loads((tiny_run / "dlm_jax_training.json").read_text())
    assert record["data"]["options"] == {"num_facts": 24} and record["data"]["task_seed"] == exp.data.task_seed
    assert (record["seq_len"], record["objective"], record["steps"]) == (12, "mdm", exp.train.max_steps)


def test_generate_prints_the_text_the_api_generates(tiny_run):
    exp = load_experiment(TINY_MDM, [])
    fact = reverse_curse_facts(exp.data.options["num_facts"], seed=exp.data.task_seed)[0]
    printed = dlm("generate", "--model", tiny_run, "--prompt", f"{fact.name} is").splitlines()[-1]
    tok = load_tokenizer(tiny_run)
    model = DiffusionLM.from_pretrained(tiny_run)
    ids = np.array([tok.encode(f"{fact.name} is")])
    # With no --max-new-tokens the canvas is the rest of the 12-token training row.
    expected = model.diffusion_generate(ids, max_new_tokens=12 - ids.shape[1], tokenizer=tok).texts[0]
    assert printed == expected and printed.strip()
    assert tok.tok.unk_token_id not in tok.encode(printed)  # words of the facts: decoded text, not ids


def _eval(model_dir, out, *extra) -> dict:
    dlm("eval", "--model", model_dir, "--tasks", "reverse_curse", "--output", out, "--log-samples", *extra)
    return json.loads(out.read_text())


def test_eval_with_no_options_scores_the_trained_facts_like_the_demo(tiny_run, tmp_path):
    exp = load_experiment(TINY_MDM, [])
    facts = reverse_curse_facts(exp.data.options["num_facts"], seed=exp.data.task_seed)
    res = _eval(tiny_run, tmp_path / "plain.json")
    forward = [s for s in res["samples"]["reverse_curse"] if s["direction"] == "forward"]
    assert [s["prompt"] for s in forward] == [f"{f.name} is" for f in facts]
    # The same generations straight through DiffusionLM, with the settings the results record.
    kw = res["configs"]["reverse_curse"]["generation_kwargs"]
    assert (kw["alg"], kw["temperature"]) == ("low_confidence", 0.0)  # the task's own sampler, as the demo's
    tok, model = load_tokenizer(tiny_run), DiffusionLM.from_pretrained(tiny_run)
    ids = np.array([tok.encode(f"{f.name} is") for f in facts])
    new = exp.train.seq_len - ids.shape[1]
    out = model.diffusion_generate(ids, max_new_tokens=new, steps=new, alg=kw["alg"], temperature=kw["temperature"],
                                   tokenizer=tok)
    assert [s["prediction"] for s in forward] == out.texts
    direct = np.mean([answer_matches(f"{f.description} .", text) for f, text in zip(facts, out.texts, strict=True)])
    accuracy = res["results"]["reverse_curse"]["forward_acc,none"]
    assert accuracy == pytest.approx(direct)
    # The demo's own query of the same model reports the same forward accuracy, fact by fact.
    built = pipeline.build_tokenizer(exp.data, pipeline.load_records(exp.data, "train"))
    trained = types.SimpleNamespace(tokenizer=built, model_config=model.config,
                                    state=types.SimpleNamespace(params=model.params), out_dir=tiny_run.parent)
    demo = reverse_curse.query_mdm(trained, exp)["forward"]  # in process, on the run's own config
    up_to_stop = [" ".join(itertools.takewhile(lambda w: w != ".", s["prediction"].split())) for s in forward]
    assert up_to_stop == [produced for _, _, produced, _ in demo.samples]
    assert accuracy == pytest.approx(demo.accuracy)
    assert accuracy >= 0.75  # the shipped config learns most of its facts


def test_sudoku_sft_then_eval_sudoku_uses_zero_shot_prompts_that_fit(tmp_path):
    run = tmp_path / "sudoku"
    dlm("train", "--config", SUDOKU_SFT, "--out", run, "--set", "train.max_steps=3")
    out = tmp_path / "sudoku.json"
    dlm("eval", "--model", run / "model", "--tasks", "sudoku", "--limit", "4", "--output", out, "--log-samples")
    res = json.loads(out.read_text())
    config, samples = res["configs"]["sudoku"], res["samples"]["sudoku"]
    assert (config["num_fewshot"], config["prompt"]) == (0, "trained")
    assert len(samples) == 4
    acc = np.mean([sudoku_valid(s["input"], s["prediction"]) for s in samples])
    assert res["results"]["sudoku"]["acc,none"] == pytest.approx(acc)
