"""Bad checkpoints raise one readable error naming the culprit, and leave nothing half-written."""

import json
import pathlib
import pickle

import numpy as np
import pytest
import torch

from dlm_jax import DiffusionLM
from dlm_jax.cli import main
from dlm_jax.conversion import engine
from dlm_jax.conversion.tensor_io import ConversionError, WeightStore, write_safetensors
from tests.hf_models import build, save


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> pathlib.Path:
    return save(build("llama"), tmp_path_factory.mktemp("llama"))


def copy_with(src: pathlib.Path, dst: pathlib.Path, *, edit_tensors=None, edit_config=None) -> pathlib.Path:
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    store = WeightStore(src)
    ts = {k: np.array(store.get(k)) for k in store.keys()}
    if edit_tensors:
        edit_tensors(ts)
    write_safetensors(dst / "model.safetensors", list(ts.items()))
    return dst


def test_unknown_model_type(llama_dir, tmp_path):
    bad = copy_with(llama_dir, tmp_path / "m", edit_config=lambda c: c.update(model_type="mamba"))
    with pytest.raises(ConversionError, match="unknown model_type 'mamba'"):
        DiffusionLM.from_pretrained(bad)


def test_missing_tensor_is_named(llama_dir, tmp_path):
    bad = copy_with(llama_dir, tmp_path / "m", edit_tensors=lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ConversionError, match=r"missing tensor\(s\) \['model.layers.1.mlp.up_proj.weight'\]"):
        DiffusionLM.from_pretrained(bad)


def test_extra_tensor_is_named(llama_dir, tmp_path):
    bad = copy_with(
        llama_dir,
        tmp_path / "m",
        edit_tensors=lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros(3, np.float32)}),
    )
    with pytest.raises(ConversionError, match=r"unexpected tensor\(s\) \['model.layers.2.mlp.up_proj.weight'\]"):
        DiffusionLM.from_pretrained(bad)


def test_wrong_shape_names_tensor_and_expected_shape(llama_dir, tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:32]

    bad = copy_with(llama_dir, tmp_path / "m", edit_tensors=shrink)
    with pytest.raises(
        ConversionError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(32, 64\), expected \(64, 64\)"
    ):
        DiffusionLM.from_pretrained(bad)


def test_mask_id_outside_vocab(llama_dir, tmp_path):
    bad = copy_with(llama_dir, tmp_path / "m", edit_config=lambda c: c.update(mask_token_id=500))
    with pytest.raises(ConversionError, match="mask_token_id=500 does not fit the vocabulary"):
        DiffusionLM.from_pretrained(bad)


def test_bin_that_is_not_a_state_dict(llama_dir, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text((llama_dir / "config.json").read_text())
    torch.save({"step": 3, "weights": [1, 2]}, folder / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="plain state dict"):
        DiffusionLM.from_pretrained(folder)

    class Evil:
        def __reduce__(self):
            return (print, ("pickles are not run",))

    with (folder / "pytorch_model.bin").open("wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(ConversionError, match="weights_only=True"):
        DiffusionLM.from_pretrained(folder)


def test_failed_export_leaves_no_folder(llama_dir, tmp_path, monkeypatch):
    model = DiffusionLM.from_pretrained(llama_dir)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(engine, "write_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "out", format="hf")
    assert list(tmp_path.iterdir()) == []


def test_cli_convert_reports_errors_and_writes_nothing(llama_dir, tmp_path, capsys):
    bad = copy_with(llama_dir, tmp_path / "bad", edit_config=lambda c: c.update(model_type="mamba"))
    assert main(["convert", "--src", str(bad), "--dst", str(tmp_path / "dst"), "--to", "dlm_jax"]) == 2
    assert "unknown model_type" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()
    assert main(["convert", "--src", str(llama_dir), "--dst", str(tmp_path / "ok"), "--to", "dlm_jax"]) == 0
    assert main(["convert", "--src", str(llama_dir), "--dst", str(tmp_path / "ok"), "--to", "hf"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "ok"]
