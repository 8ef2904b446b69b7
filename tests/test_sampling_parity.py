"""Exact parity of `DiffusionLM.diffusion_generate` with Dream's, LLaDA's and DiffuLLaMA's reference samplers."""

import json

import numpy as np
import pytest

from dlm_jax.api import DiffusionLM
from dlm_jax.sampling.schedules import dream_transfer_fractions, torch_linspace_f32


def _cases(data_dir, family):
    folder = data_dir / "parity" / family
    meta = json.loads((folder / "cases.json").read_text())
    return folder, meta["cases"], np.load(folder / "vectors.npz")


@pytest.fixture(scope="module")
def dream(data_dir):
    folder, cases, vectors = _cases(data_dir, "dream")
    return DiffusionLM.from_pretrained(folder / "model"), cases, vectors


@pytest.fixture(scope="module")
def llada(data_dir):
    folder, cases, vectors = _cases(data_dir, "llada")
    return DiffusionLM.from_pretrained(folder / "model", logit_shift=False), cases, vectors


@pytest.fixture(scope="module")
def diffullama(data_dir):
    folder, cases, vectors = _cases(data_dir, "diffullama")
    return DiffusionLM.from_pretrained(folder / "model"), cases, vectors


@pytest.mark.slow
def test_dream_generate_cases_match_sequences_and_every_history_step(dream):
    model, cases, vectors = dream
    gen_cases = [c for c in cases if c["kind"] == "generate"]
    assert len(gen_cases) == 5
    for case in gen_cases:
        name = case["name"]
        mask = vectors[f"{name}.attention_mask"]
        kwargs = {k: case[k] for k in ("top_p", "top_k") if k in case}
        out = model.diffusion_generate(
            vectors[f"{name}.input_ids"],
            attention_mask=mask if (mask == 0).any() else None,
            max_new_tokens=case["max_new_tokens"],
            steps=case["steps"],
            alg=case["alg"],
            temperature=case["temperature"],
            alg_temp=case["alg_temp"],
            eps=case["eps"],
            output_history=True,
            **kwargs,
        )
        np.testing.assert_array_equal(out.sequences, vectors[f"{name}.sequences"], err_msg=name)
        assert out.history.shape == vectors[f"{name}.history"].shape, name
        for step, expected in enumerate(vectors[f"{name}.history"]):
            np.testing.assert_array_equal(out.history[step], expected, err_msg=f"{name} step {step}")
        assert out.nfe.tolist() == [case["steps"]] * len(out.nfe)


@pytest.mark.slow
def test_llada_cases_match(llada):
    model, cases, vectors = llada
    assert len(cases) == 3
    for case in cases:
        name = case["name"]
        out = model.diffusion_generate(
            vectors[f"{name}.prompt"],
            max_new_tokens=case["gen_length"],
            steps=case["steps"],
            block_length=case["block_length"],
            remasking=case["remasking"],
            cfg_scale=case.get("cfg_scale", 0.0),
            temperature=case["temperature"],
        )
        np.testing.assert_array_equal(out.sequences, vectors[f"{name}.sequences"], err_msg=name)
        passes = 2 if case.get("cfg_scale", 0.0) > 0 else 1
        assert out.nfe.tolist() == [passes * case["steps"]] * len(out.nfe)


def test_diffullama_cases_match(diffullama):
    model, cases, vectors = diffullama
    assert len(cases) == 2
    for case in cases:
        name = case["name"]
        out = model.diffusion_generate(
            vectors[f"{name}.input_ids"],
            src_mask=vectors[f"{name}.src_mask"],
            steps=case["diffusion_steps"],
            alg="diffullama",
            logits_temp=case["logits_temp"],
            temperature=0.0,
        )
        assert out.sequences.shape == vectors[f"{name}.input_ids"].shape
        np.testing.assert_array_equal(out.sequences[:, 1:], vectors[f"{name}.output"], err_msg=name)


def test_timesteps_equal_torch_linspace_float32():
    torch = pytest.importorskip("torch")
    for eps in (1e-3, 1e-2, 0.37):
        for num in list(range(1, 70)) + [129, 257, 513, 1025]:
            expected = torch.linspace(1, eps, num).numpy()
            np.testing.assert_array_equal(torch_linspace_f32(1.0, eps, num), expected, err_msg=f"{eps} {num}")


def test_dream_transfer_fractions_are_torch_float32_ratios():
    torch = pytest.importorskip("torch")
    t = torch.linspace(1, 1e-3, 65)
    expected = (1 - t[1:] / t[:-1]).numpy()
    expected[-1] = 1.0
    np.testing.assert_array_equal(dream_transfer_fractions(64, 1e-3), expected)
