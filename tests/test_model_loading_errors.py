"""Bad model folders and `--set` values give one `dlm-jax CMD: error: ...` line naming the culprit, and no output."""

import json
import pathlib
import shutil

import pytest

from tests.cli_checks import assert_one_line_error
from tests.hf_models import build, save, save_tokenizer


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> pathlib.Path:
    return save(build("llama"), tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def native_dir(llama_dir, tmp_path_factory) -> pathlib.Path:
    from dlm_jax import DiffusionLM

    return DiffusionLM.from_pretrained(llama_dir).save_pretrained(tmp_path_factory.mktemp("n") / "native")


def copy_with_config(src: pathlib.Path, dst: pathlib.Path, edit) -> pathlib.Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def convert_fails(src: pathlib.Path, tmp_path: pathlib.Path, capsys, contains, *extra: str) -> str:
    dst = tmp_path / "out"
    return assert_one_line_error(
        ["convert", "--src", str(src), "--dst", str(dst), "--to", "dlm_jax", *extra],
        capsys,
        contains=contains,
        absent=[dst],
    )


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("hidden_size", "64", "an integer"),
        ("num_hidden_layers", 2.0, "an integer"),
        ("rms_norm_eps", "1e-6", "a number"),
        ("tie_word_embeddings", "false", "true or false"),
        ("mask_token_id", "79", "an integer"),
    ],
)
def test_config_field_types_are_refused_naming_field_value_and_type(llama_dir, tmp_path, capsys, key, value, expected):
    bad = copy_with_config(llama_dir, tmp_path / "bad", lambda c: c.update({key: value}))
    convert_fails(bad, tmp_path, capsys, [f"{bad / 'config.json'}: {key}={json.dumps(value)}", expected])


def test_missing_or_unreadable_config_is_named(llama_dir, tmp_path, capsys):
    bad = copy_with_config(llama_dir, tmp_path / "bad", lambda c: c.pop("vocab_size"))
    convert_fails(bad, tmp_path, capsys, ["config.json", "missing field 'vocab_size'"])
    (bad / "config.json").write_text("{not json")
    convert_fails(bad, tmp_path, capsys, ["config.json", "not valid JSON"])
    (bad / "config.json").unlink()
    convert_fails(bad, tmp_path, capsys, [f"model folder {bad} has no config.json", "dlm_jax_config.json"])


def test_the_same_bad_config_is_one_line_in_generate_and_eval(llama_dir, tmp_path, capsys):
    bad = copy_with_config(llama_dir, tmp_path / "bad", lambda c: c.update(rms_norm_eps="1e-6"))
    save_tokenizer(tmp_path / "tok")
    for argv in (
        ["generate", "--model", str(bad), "--prompt-ids", "1,2,3"],
        ["eval", "--model", str(bad), "--tokenizer", str(tmp_path / "tok"), "--tasks", "reverse_curse"],
    ):
        assert_one_line_error(argv, capsys, contains='rms_norm_eps="1e-6" must be a number')


def test_truncated_or_corrupt_safetensors_name_the_file(llama_dir, tmp_path, capsys):
    bad = shutil.copytree(llama_dir, tmp_path / "bad")
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    convert_fails(bad, tmp_path, capsys, [str(weights), "truncated"])
    weights.write_bytes(data[:8] + b"\xff" * 64)
    convert_fails(bad, tmp_path, capsys, [str(weights), "safetensors"])
    weights.write_bytes(b"\x01\x02")
    convert_fails(bad, tmp_path, capsys, [str(weights), "not a safetensors file"])
    weights.unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_fails(bad, tmp_path, capsys, ["model.safetensors.index.json", "model-00001-of-00002.safetensors"])


def test_corrupt_native_folder_names_the_file(native_dir, tmp_path, capsys):
    bad = shutil.copytree(native_dir, tmp_path / "bad")
    meta = json.loads((bad / "dlm_jax_config.json").read_text())
    meta["model_config"]["hidden_size"] = "64"
    (bad / "dlm_jax_config.json").write_text(json.dumps(meta))
    convert_fails(bad, tmp_path, capsys, ["dlm_jax_config.json", "hidden_size='64' must be an integer"])

    bad2 = shutil.copytree(native_dir, tmp_path / "bad2")
    biggest = max((p for p in (bad2 / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:100])
    convert_fails(bad2, tmp_path, capsys, [f"{bad2 / 'params'}: parameters could not be read"])


@pytest.mark.parametrize(
    "command",
    [
        ["convert", "--dst", "OUT", "--to", "hf"],
        ["generate", "--prompt-ids", "1,2"],
        ["chat"],
        ["eval", "--tasks", "sudoku"],
    ],
)
def test_missing_model_folder_is_named_by_every_command(command, tmp_path, capsys):
    missing = tmp_path / "nope"
    flag = "--src" if command[0] == "convert" else "--model"
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in command] + [flag, str(missing)]
    assert_one_line_error(
        argv, capsys, contains=f"model folder {missing} does not exist", absent=[tmp_path / "out", missing]
    )


@pytest.mark.parametrize(
    "pair, contains",
    [
        ("mask_token_id=abc", ["--set mask_token_id=abc", "mask_token_id must be an integer or none"]),
        ("logit_shift=maybe", ["--set logit_shift=maybe", "true or false"]),
        ("hidden_size=8", ["--set hidden_size", "changes the checkpoint's shapes"]),
        ("hidden_sise=8", ["--set hidden_sise", "not a ModelConfig field"]),
        ("mask_token_id", ["--set 'mask_token_id'", "expected KEY=VALUE"]),
        ("mask_token_id=500", ["mask_token_id=500 does not fit the vocabulary"]),
    ],
)
def test_bad_set_values_name_the_key_and_type(llama_dir, tmp_path, capsys, pair, contains):
    convert_fails(llama_dir, tmp_path, capsys, contains, "--set", pair)


def test_generate_types_set_values_the_same_way(llama_dir, capsys):
    assert_one_line_error(
        ["generate", "--model", str(llama_dir), "--prompt-ids", "1,2", "--set", "mask_token_id=abc"],
        capsys,
        contains="--set mask_token_id=abc: mask_token_id must be an integer or none",
    )
