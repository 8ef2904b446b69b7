"""Logits of converted checkpoints vs HF transformers and vs Dream's own parity vectors."""

import json

import numpy as np
import pytest

from dlm_jax import DiffusionLM
from tests.hf_models import build, hf_logits, save

KINDS = ["qwen2", "llama", "gpt2"]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
    hf = build(request.param)
    folder = save(hf, tmp_path_factory.mktemp(request.param))
    return request.param, hf, DiffusionLM.from_pretrained(folder)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_logits_match_hf_with_left_padding(pair, causal):
    kind, hf, ours = pair
    if causal:
        ours = DiffusionLM(ours.config.replace(attention_mode="causal"), ours.params)
    rng = np.random.default_rng(1)
    vocab = ours.config.vocab_size
    ids = rng.integers(0, vocab, size=(3, 9))
    pad = np.ones_like(ids)
    pad[1, :3] = 0
    pad[2, :6] = 0
    for mask in (np.ones_like(ids), pad):
        ref = hf_logits(hf, ids, mask, causal=causal)
        out = ours.logits(ids, mask if (mask == 0).any() else None)
        valid = mask.astype(bool)
        assert rel_err(out[valid], ref[valid]) < 1e-4, kind


def test_family_specific_config_mapping(pair):
    kind, _, ours = pair
    c = ours.config
    expected = {"qwen2": ("dream", True, 2), "llama": ("llama", False, 4), "gpt2": ("gpt2", True, 4)}[kind]
    assert (c.family, c.qkv_bias, c.num_kv_heads) == expected
    assert c.logit_shift and c.mask_token_id == c.vocab_size - 1


def test_dream_parity_vectors(data_dir):
    folder = data_dir / "parity" / "dream"
    model = DiffusionLM.from_pretrained(folder / "model")
    vectors = np.load(folder / "vectors.npz")
    cases = [c for c in json.loads((folder / "cases.json").read_text())["cases"] if c["kind"] == "logits"]
    assert len(cases) == 2
    for case in cases:
        name = case["name"]
        mask = vectors[f"{name}.attention_mask"] if f"{name}.attention_mask" in vectors.files else None
        out = model.logits(vectors[f"{name}.input_ids"], mask)
        ref = vectors[f"{name}.logits"]
        valid = np.ones(ref.shape[:2], bool) if mask is None else mask.astype(bool)
        assert rel_err(out[valid], ref[valid]) < 1e-4, name
