"""HF -> dlm_jax -> HF is bit-identical; sharded, bf16 and .bin inputs; native format; transformers reloads exports."""

import json
import pathlib

import numpy as np
import pytest
import torch

from dlm_jax import DiffusionLM
from dlm_jax.conversion.tensor_io import WeightStore
from tests.hf_models import build, save


def tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    store = WeightStore(folder)
    return {k: np.array(store.get(k)) for k in store.keys()}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("kind", ["qwen2", "llama", "gpt2"])
def test_hf_round_trip_is_bit_identical(kind, tmp_path):
    src = save(build(kind), tmp_path / "src")
    model = DiffusionLM.from_pretrained(src)
    out = model.save_pretrained(tmp_path / "out", format="hf")
    assert_bit_identical(tensors(src), tensors(out))
    assert (
        json.loads((out / "config.json").read_text())["model_type"]
        == json.loads((src / "config.json").read_text())["model_type"]
    )


def test_bf16_sharded_round_trip_through_the_native_format(tmp_path):
    hf = build("qwen2").to(torch.bfloat16)
    src = save(hf, tmp_path / "src", max_shard_size="40KB")
    assert (src / "model.safetensors.index.json").is_file()
    model = DiffusionLM.from_pretrained(src, dtype="bfloat16")
    native = model.save_pretrained(tmp_path / "native", format="dlm_jax")
    again = DiffusionLM.from_pretrained(native, dtype="bfloat16")
    from dlm_jax.conversion.engine import export_hf

    out = export_hf(again.params, again.config, tmp_path / "out", hf_config=again.hf_config, max_shard_bytes=10_000)
    assert (out / "model.safetensors.index.json").is_file()
    assert_bit_identical(tensors(src), tensors(out))


def test_torch_bin_input(tmp_path):
    hf = build("llama")
    folder = tmp_path / "bin"
    folder.mkdir()
    hf.config.save_pretrained(folder)
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    model = DiffusionLM.from_pretrained(folder)
    ids = np.arange(12).reshape(2, 6)
    ref = DiffusionLM.from_pretrained(save(hf, tmp_path / "st")).logits(ids)
    np.testing.assert_array_equal(model.logits(ids), ref)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generated_config_export_loads_in_transformers(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    model = DiffusionLM.from_pretrained(save(build(kind), tmp_path / "src"))
    fresh = DiffusionLM(model.config, model.params)  # no source config.json: one is generated
    out = fresh.save_pretrained(tmp_path / "out", format="hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(10).reshape(2, 5)
    with torch.no_grad():
        ref = hf(ids, attention_mask=torch.zeros(2, 1, 5, 5)).logits.numpy()
    got = model.logits(ids.numpy())
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    assert DiffusionLM.from_pretrained(out).config == model.config


def test_runtime_overrides_apply_and_shape_overrides_are_refused(tmp_path):
    src = save(build("llama"), tmp_path / "src")
    model = DiffusionLM.from_pretrained(src, logit_shift=False, attention_impl="xla")
    assert model.config.logit_shift is False
    with pytest.raises(ValueError, match="hidden_size"):
        DiffusionLM.from_pretrained(src, hidden_size=8)
