"""The `dlm_jax` lm-eval backend, offline: local task YAMLs over local JSONL, a tiny model and tokenizer."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import readme_standins as standins

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from dlm_jax.api import DiffusionLM  # noqa: E402
from dlm_jax.evaluation.batching import pack_targets  # noqa: E402
from dlm_jax.evaluation.likelihood import chain_rule_log_probs  # noqa: E402
from dlm_jax.models.config import ModelConfig  # noqa: E402

WORDS = "the sky is blue red green grass sun hot cold ice what color of a".split()
MC_DOCS = [
    {"question": "the sky is", "choices": ["blue", "red"], "label": 0},
    {"question": "the grass is", "choices": ["red", "green"], "label": 1},
    {"question": "the sun is", "choices": ["hot", "cold"], "label": 0},
    {"question": "the ice is", "choices": ["blue", "cold"], "label": 1},
]
# Same-length prompts and choice counts: the direct reference computations compile once.
GEN_DOCS = [
    {"question": "what color is the sky", "answer": "blue"},
    {"question": "what color is the grass", "answer": "green"},
    {"question": "what color is the sun", "answer": "hot"},
]
GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 3
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("harness")
    specials = ["[PAD]", "[UNK]", "[EOS]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + ["."])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]", mask_token="[MASK]"
    )
    cfg = ModelConfig(
        family="dream",
        vocab_size=len(vocab),
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=32,
        qkv_bias=True,
        logit_shift=True,
        mask_token_id=vocab["[MASK]"],
        pad_token_id=vocab["[PAD]"],
        eos_token_id=vocab["[EOS]"],
        max_position_embeddings=64,
    )
    model = DiffusionLM.init(cfg, seed=0)
    import jax

    model.params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, model.params)
    model_dir = root / "model"
    model.save_pretrained(model_dir, format="dlm_jax")
    tok.save_pretrained(str(model_dir))
    data = root / "data"
    data.mkdir()
    standins.lm_eval_mc_task(data, "tiny_mc", MC_DOCS)
    (data / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in GEN_DOCS))
    (data / "tiny_gen.yaml").write_text(GEN_YAML.format(data=data))
    loaded = DiffusionLM.from_pretrained(model_dir)
    return {"model_dir": model_dir, "data": data, "model": loaded, "tok": tok}


def direct_chain_logliks(model, tok, question, choices):
    prompt = tok.encode(question, add_special_tokens=False)
    targets = [tok.encode(" " + c, add_special_tokens=False) for c in choices]
    batch = pack_targets([prompt] * len(choices), targets, max_length=64, shifted=True)
    lp, _ = chain_rule_log_probs(model.params, *batch, config=model.config)
    return np.asarray(lp).sum(-1)


def direct_generation(model, tok, question, max_new):
    ids = np.asarray([tok.encode(question, add_special_tokens=False)], np.int32)
    out = model.diffusion_generate(ids, max_new_tokens=max_new, steps=max_new, alg="entropy")
    new = [int(t) for t in np.asarray(out.sequences)[0, ids.shape[1] :]]
    eos = model.config.eos_token_id
    new = new[: new.index(eos)] if eos in new else new
    return tok.decode(new, skip_special_tokens=True).split(".")[0]


@pytest.mark.slow
def test_simple_evaluate_matches_direct_computation(setup):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import dlm_jax.evaluation.harness  # noqa: F401  (registers "dlm_jax")

    res = lm_eval.simple_evaluate(
        model="dlm_jax",
        model_args=f"pretrained={setup['model_dir']},estimator=chain,batch_size=4,max_new_tokens=3,alg=entropy",
        tasks=["tiny_mc", "tiny_gen"],
        task_manager=TaskManager(include_path=str(setup["data"])),
        log_samples=True,
    )
    model, tok = setup["model"], setup["tok"]
    want_acc = []
    by_doc = {s["doc_id"]: s for s in res["samples"]["tiny_mc"]}
    for i, doc in enumerate(MC_DOCS):
        lls = direct_chain_logliks(model, tok, doc["question"], doc["choices"])
        got = [r[0][0] for r in by_doc[i]["resps"]]
        np.testing.assert_allclose(got, lls, rtol=1e-4, atol=1e-4)
        want_acc.append(float(np.argmax(lls) == doc["label"]))
    assert res["results"]["tiny_mc"]["acc,none"] == pytest.approx(np.mean(want_acc))
    gens = {s["doc_id"]: s for s in res["samples"]["tiny_gen"]}
    want_em = []
    for i, doc in enumerate(GEN_DOCS):
        text = direct_generation(model, tok, doc["question"], 3)
        assert gens[i]["resps"][0][0] == text
        want_em.append(float(text.strip() == doc["answer"]))
    assert res["results"]["tiny_gen"]["exact_match,none"] == pytest.approx(np.mean(want_em))
    assert res["config"]["estimator"]["kind"] == "chain"
    assert res["config"]["model_config"]["mask_token_id"] == model.config.mask_token_id
    assert res["config"]["sampler"]["max_new_tokens"] == 3


@pytest.mark.slow
def test_lm_eval_cli_through_module_entry_point(setup, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "dlm_jax.evaluation.harness",
        "--model",
        "dlm_jax",
        "--model_args",
        f"pretrained={setup['model_dir']},estimator=chain",
        "--tasks",
        "tiny_mc",
        "--include_path",
        str(setup["data"]),
        "--output_path",
        str(out),
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "XLA_FLAGS": ""}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=300, cwd=pathlib.Path(__file__).parents[1]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1, list(out.rglob("*"))
    results = json.loads(files[0].read_text())
    model, tok = setup["model"], setup["tok"]
    want = np.mean(
        [np.argmax(direct_chain_logliks(model, tok, d["question"], d["choices"])) == d["label"] for d in MC_DOCS]
    )
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(want)
    assert results["config"]["dlm_jax_version"]


def test_bad_model_args_are_rejected(setup):
    from dlm_jax.evaluation.harness import DLMJaxLM

    with pytest.raises(ValueError, match="mc_num=10 is not divisible by mc_batch_size=4"):
        DLMJaxLM(pretrained=str(setup["model_dir"]), mc_num=10, mc_batch_size=4)
    with pytest.raises(ValueError, match="batch_size='auto'"):
        DLMJaxLM(pretrained=str(setup["model_dir"]), batch_size="auto")


def test_loglikelihood_rolling_chain_equals_direct_sum(setup):
    from types import SimpleNamespace

    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from dlm_jax.evaluation.harness import DLMJaxLM

    lm = DLMJaxLM(pretrained=str(setup["model_dir"]), rolling_estimator="chain", max_length=8)
    docs = ["the sky is blue and the grass is green", "the sun is hot"]
    got = lm.loglikelihood_rolling([SimpleNamespace(args=(d,)) for d in docs])
    model, tok = setup["model"], setup["tok"]
    for doc, value in zip(docs, got, strict=True):
        ids = tok.encode(doc, add_special_tokens=False)
        windows = [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(ids, prefix_token=lm.prefix_token_id, max_seq_len=7, context_len=1)
        ]
        assert sum(len(t) for _, t in windows) == len(ids)
        batch = pack_targets([list(c) for c, _ in windows], [list(t) for _, t in windows], max_length=8, shifted=True)
        lp, _ = chain_rule_log_probs(model.params, *batch, config=model.config)
        assert value == pytest.approx(float(np.asarray(lp).sum()), rel=1e-4)
