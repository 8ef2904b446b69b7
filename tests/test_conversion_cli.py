"""`dlm-jax convert` keeps dtype, config keys, tokenizer and generation config; an unsafe --dst is refused."""

import hashlib
import json
import os
import pathlib

import numpy as np
import pytest
import torch

from dlm_jax.conversion.tensor_io import WeightStore
from dlm_jax.output_dir import MANIFEST
from tests.cli_checks import assert_one_line_error, run_cli
from tests.hf_models import build, save, save_tokenizer


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> pathlib.Path:
    """A bf16 Qwen2 folder with a tokenizer, generation_config.json and a config key we do not model."""
    folder = save(build("qwen2").to(torch.bfloat16), tmp_path_factory.mktemp("m") / "src")
    save_tokenizer(folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "top_k": 50, "max_new_tokens": 7}))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["custom_note"] = {"kept": True}
    (folder / "config.json").write_text(json.dumps(cfg))
    for path in folder.iterdir():
        path.chmod(0o600)  # copies must follow the umask, not the source's modes
    return folder


def convert(src: pathlib.Path, dst: pathlib.Path, to: str, *extra: str, capsys) -> None:
    rc, out, err = run_cli(["convert", "--src", str(src), "--dst", str(dst), "--to", to, *extra], capsys)
    assert rc == 0, err
    assert f"wrote {to} checkpoint to {dst}" in out


def tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    store = WeightStore(folder)
    return {k: np.array(store.get(k)) for k in store.keys()}


def digest(folder: pathlib.Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_round_trip_keeps_dtype_config_tokenizer_and_generation_config(src, tmp_path, capsys):
    from transformers import AutoTokenizer

    native, back = tmp_path / "native", tmp_path / "back"
    convert(src, native, "dlm_jax", capsys=capsys)
    assert json.loads((native / "dlm_jax_config.json").read_text())["model_config"]["param_dtype"] == "bfloat16"
    convert(native, back, "hf", capsys=capsys)

    original, exported = tensors(src), tensors(back)
    assert sorted(original) == sorted(exported)
    for name, arr in original.items():
        assert exported[name].dtype == arr.dtype == np.dtype("bfloat16"), name
        assert exported[name].tobytes() == arr.tobytes(), name
    assert json.loads((back / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (native / name).read_bytes() == (src / name).read_bytes(), name
        assert (back / name).read_bytes() == (src / name).read_bytes(), name
    tok, ref = AutoTokenizer.from_pretrained(back), AutoTokenizer.from_pretrained(src)
    ids = tok("the cat sat")["input_ids"]
    assert ids == ref("the cat sat")["input_ids"] and len(ids) == 3 and tok.decode(ids) == "the cat sat"
    assert (tok.mask_token, tok.eos_token) == ("<|mask|>", "<|endoftext|>")
    assert tok.apply_chat_template([{"role": "user", "content": "a dog"}], tokenize=False) == "a dog "


def test_explicit_dtype_is_kept_by_the_next_conversion(tmp_path, capsys):
    """The issue's case: `--to dlm_jax --dtype bfloat16` then `--to hf` must write bfloat16, not float32."""
    f32 = save(build("llama"), tmp_path / "f32")
    convert(f32, tmp_path / "native", "dlm_jax", "--dtype", "bfloat16", capsys=capsys)
    convert(tmp_path / "native", tmp_path / "hf", "hf", capsys=capsys)
    out = tensors(tmp_path / "hf")
    assert {a.dtype for a in out.values()} == {np.dtype("bfloat16")}
    ref = tensors(f32)
    np.testing.assert_array_equal(
        out["model.embed_tokens.weight"].astype(np.float32),
        ref["model.embed_tokens.weight"].astype("bfloat16").astype(np.float32),
    )
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    convert(f32, tmp_path / "f32_again", "hf", capsys=capsys)
    assert {a.dtype for a in tensors(tmp_path / "f32_again").values()} == {np.dtype("float32")}


def test_runtime_overrides_and_attention_mode_survive_hf(src, tmp_path, capsys):
    from dlm_jax import DiffusionLM

    convert(src, tmp_path / "hf", "hf", "--set", "mask_token_id=3", "--set", "logit_shift=false", capsys=capsys)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["mask_token_id"], cfg["logit_shift"], cfg["custom_note"]) == (3, False, {"kept": True})
    model = DiffusionLM.from_pretrained(tmp_path / "hf", dtype=None)
    assert (model.config.mask_token_id, model.config.logit_shift, model.config.param_dtype) == (3, False, "bfloat16")
    causal = DiffusionLM(model.config.replace(attention_mode="causal"), model.params, hf_config=model.hf_config)
    causal.save_pretrained(tmp_path / "causal", format="hf")
    assert DiffusionLM.from_pretrained(tmp_path / "causal").config.attention_mode == "causal"


def test_save_pretrained_carries_side_files_and_remote_code(tmp_path):
    from dlm_jax import DiffusionLM

    src = save(build("llama"), tmp_path / "src")
    save_tokenizer(src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_tiny.TinyModel"}
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "modeling_tiny.py").write_text("from .generation_utils import X\n")
    (src / "generation_utils.py").write_text("X = 1\n")
    (src / "README.md").write_text("not a side file")
    model = DiffusionLM.from_pretrained(src)
    native = model.save_pretrained(tmp_path / "native")
    hf = DiffusionLM.from_pretrained(native).save_pretrained(tmp_path / "hf", format="hf")
    carried = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"}
    carried |= {"modeling_tiny.py", "generation_utils.py"}
    for folder in (native, hf):
        assert carried <= {p.name for p in folder.iterdir()}, folder
        assert not (folder / "README.md").exists()
    assert json.loads((hf / "config.json").read_text())["auto_map"] == cfg["auto_map"]
    bare = DiffusionLM(model.config, model.params).save_pretrained(tmp_path / "bare")  # no source: no side files
    assert sorted(p.name for p in bare.iterdir()) == ["dlm_jax_config.json", MANIFEST, "params"]


def test_destination_inside_or_around_the_source_is_refused(src, tmp_path, capsys):
    before = digest(src)
    for dst in (src, src / "sub", src.parent):
        assert_one_line_error(
            ["convert", "--src", str(src), "--dst", str(dst), "--to", "hf", "--overwrite"],
            capsys,
            contains=[f"--dst {dst}", "source folder"],
        )
    assert digest(src) == before
    assert not (src / "sub").exists()


def test_overwrite_replaces_only_a_folder_dlm_jax_wrote(src, tmp_path, capsys):
    dst = tmp_path / "out"
    convert(src, dst, "dlm_jax", capsys=capsys)
    assert_one_line_error(
        ["convert", "--src", str(src), "--dst", str(dst), "--to", "hf"], capsys, contains="pass --overwrite"
    )
    assert (dst / "dlm_jax_config.json").is_file()
    convert(src, dst, "hf", "--overwrite", capsys=capsys)  # ours: replaced
    assert (dst / "config.json").is_file() and not (dst / "dlm_jax_config.json").exists()
    assert set(json.loads((dst / MANIFEST).read_text())["files"]) == set(digest(dst)) - {MANIFEST}

    (dst / "notes.txt").write_text("mine")
    before = digest(dst)
    assert_one_line_error(
        ["convert", "--src", str(src), "--dst", str(dst), "--to", "dlm_jax", "--overwrite"],
        capsys,
        contains=["notes.txt", "did not write"],
    )
    assert digest(dst) == before

    unrelated = tmp_path / "data"
    (unrelated / "deep").mkdir(parents=True)
    (unrelated / "a.csv").write_text("1,2")
    (unrelated / "deep" / "b.txt").write_text("x")
    assert_one_line_error(
        ["convert", "--src", str(src), "--dst", str(unrelated), "--to", "hf", "--overwrite"],
        capsys,
        contains=["a.csv", "deep/b.txt"],
    )
    assert sorted(digest(unrelated)) == ["a.csv", "deep/b.txt"]

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_one_line_error(
        ["convert", "--src", str(src), "--dst", str(a_file), "--to", "hf", "--overwrite"],
        capsys,
        contains="is not a folder",
    )
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask(src, tmp_path, capsys, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        convert(src, tmp_path / "new" / "native", "dlm_jax", capsys=capsys)
        convert(tmp_path / "new" / "native", tmp_path / "hf", "hf", capsys=capsys)
    finally:
        os.umask(old)
    for root in (tmp_path / "new", tmp_path / "hf"):
        paths = [root, *root.rglob("*")]
        assert len(paths) > 5
        for path in paths:
            want = dir_mode if path.is_dir() else file_mode
            assert path.stat().st_mode & 0o777 == want, (path, oct(path.stat().st_mode & 0o777))


def test_a_failed_conversion_leaves_nothing_behind(src, tmp_path, capsys, monkeypatch):
    from dlm_jax.conversion import engine

    def disk_full(*args, **kwargs):
        raise ValueError("disk full")

    monkeypatch.setattr(engine, "write_safetensors", disk_full)
    dst = tmp_path / "a" / "b" / "out"
    assert_one_line_error(
        ["convert", "--src", str(src), "--dst", str(dst), "--to", "hf"],
        capsys,
        contains="disk full",
        absent=[tmp_path / "a"],
    )
    assert list(tmp_path.iterdir()) == []
