"""`dlm-jax generate` as a user runs it: token ids outside the vocabulary are refused, --top-k none turns the
filter off, and --output-jsonl is written batch by batch, survives SIGTERM and continues with --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_checks import assert_one_line_error, run_cli

from dlm_jax.api import DiffusionLM

SAMPLER = ["--max-new-tokens", "8", "--steps", "4", "--alg", "entropy"]


@pytest.fixture(scope="module")
def model_dir(data_dir):
    """The tiny Dream checkpoint (vocab_size 300, no tokenizer: prompts are ids)."""
    return data_dir / "parity" / "dream" / "model"


@pytest.fixture(scope="module")
def model(model_dir):
    return DiffusionLM.from_pretrained(model_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_ids_outside_the_vocabulary_are_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    base = ["generate", "--model", str(model_dir), *SAMPLER]
    assert_one_line_error(
        [*base, "--prompt-ids", "5,6,300", "--output-jsonl", str(out)],
        capsys,
        contains=["--prompt-ids 5,6,300", "token id 300", "size 300"],
        absent=[out],
    )
    assert_one_line_error([*base, "--prompt-ids=-1,6"], capsys, contains=["token id -1", "size 300"])
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt_ids": [5, 6]}, {"prompt_ids": [7, 1000]}])
    assert_one_line_error(
        [*base, "--input-jsonl", str(src), "--output-jsonl", str(out)],
        capsys,
        contains=[f"{src}:2: prompt_ids", "token id 1000", "size 300"],
        absent=[out],
    )
    src = write_jsonl(tmp_path / "in2.jsonl", [{"prompt_ids": "5,6"}])
    assert_one_line_error(
        [*base, "--input-jsonl", str(src)], capsys, contains=[f"{src}:1: 'prompt_ids' must be a non-empty list"]
    )
    assert_one_line_error([*base, "--prompt-ids", "5", "--top-k", "-3"], capsys, contains="--top-k '-3'")


def test_the_python_api_refuses_ids_outside_the_vocabulary(model):
    with pytest.raises(ValueError, match=r"token id 300 is outside the vocabulary \(size 300, ids 0\.\.299\)"):
        model.logits(np.array([[1, 2, 300]]))
    with pytest.raises(ValueError, match=r"token id -4 is outside the vocabulary \(size 300"):
        model.diffusion_generate(np.array([[-4, 2]]), max_new_tokens=4, steps=2, alg="entropy")


def test_top_k_none_turns_the_filter_off(model_dir, model, capsys):
    ids = np.array([[5, 6, 7]])
    sampled = ["--temperature", "1.0", "--seed", "3"]
    kw = dict(max_new_tokens=8, steps=4, alg="entropy", temperature=1.0, seed=3)
    default = model.diffusion_generate(ids, **kw).completions[0].tolist()
    off = model.diffusion_generate(ids, top_k=None, **kw).completions[0].tolist()
    assert default != off  # top-k 50 of 300 near-uniform logits changes what is sampled
    base = ["generate", "--model", str(model_dir), "--prompt-ids", "5,6,7", "--pad-multiple", "1", *SAMPLER, *sampled]
    printed = []
    for extra in ([], ["--top-k", "none"], ["--top-k", "0"], ["--top-k", "50"]):
        rc, out, err = run_cli([*base, *extra], capsys)
        assert rc == 0, err
        printed.append(json.loads(out))
    assert printed == [default, off, off, default]


def test_existing_output_needs_resume_or_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text('{"old": 1}\n')
    base = ["generate", "--model", str(model_dir), "--prompt-ids", "5,6", *SAMPLER, "--output-jsonl", str(out)]
    assert_one_line_error(base, capsys, contains=[f"--output-jsonl {out} exists", "--resume", "--overwrite"])
    assert_one_line_error([*base, "--resume", "--overwrite"], capsys, contains="pass one of them")
    assert out.read_text() == '{"old": 1}\n'
    rc, _, err = run_cli([*base, "--overwrite"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt_ids"] == [5, 6] and len(rows[0]["completion_ids"]) == 8


@pytest.mark.slow
def test_sigterm_keeps_whole_lines_and_resume_completes_the_run(model_dir, tmp_path, capsys):
    # Prompts of 3 different lengths, one per batch with no padding: every batch compiles its own
    # sampler, so the run is still busy well after its first batch is written.
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt_ids": list(range(5, 6 + i))} for i in range(3)])
    flags = [*SAMPLER, "--input-jsonl", str(src), "--batch-size", "1", "--pad-multiple", "1"]
    cut = tmp_path / "cut.jsonl"
    run = ["generate", "--model", str(model_dir), *flags, "--output-jsonl"]
    cmd = [sys.executable, "-m", "dlm_jax.cli", *run, str(cut)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 240
    while (not cut.exists() or not cut.read_bytes().endswith(b"\n")) and proc.poll() is None:
        assert time.time() < deadline, "no batch was written in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "--resume" in err
    kept = cut.read_text()
    assert kept.endswith("\n")
    rows = [json.loads(line) for line in kept.splitlines()]
    assert 1 <= len(rows) < 3 and [r["id"] for r in rows] == list(range(len(rows)))

    rc, out, err = run_cli([*run, str(cut), "--resume"], capsys)
    assert rc == 0, err
    assert f"wrote {3 - len(rows)} completions to {cut} ({len(rows)} were already there)" in out
    full = tmp_path / "full.jsonl"
    assert run_cli([*run, str(full)], capsys)[0] == 0
    assert cut.read_text() == full.read_text()
    # A finished file: --resume has nothing left to do and leaves it as it is.
    rc, out, _ = run_cli([*run, str(cut), "--resume"], capsys)
    assert rc == 0 and "already" in out and cut.read_text() == full.read_text()


def test_resume_drops_a_half_line_and_refuses_another_inputs_output(model_dir, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt_ids": [5, 6 + i]} for i in range(3)])
    run = ["generate", "--model", str(model_dir), *SAMPLER, "--input-jsonl", str(src), "--batch-size", "2"]
    full = tmp_path / "full.jsonl"
    assert run_cli([*run, "--output-jsonl", str(full)], capsys)[0] == 0
    lines = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:2]) + lines[2][:15])  # killed mid-line (e.g. SIGKILL)
    rc, _, err = run_cli([*run, "--output-jsonl", str(part), "--resume"], capsys)
    assert rc == 0, err
    assert part.read_text() == full.read_text()
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": 9, "prompt_ids": [5, 6]}] * 3)
    part.write_text(lines[0])
    assert_one_line_error(
        ["generate", "--model", str(model_dir), *SAMPLER, "--input-jsonl", str(other), "--output-jsonl", str(part),
         "--resume"],
        capsys,
        contains=[f"--resume: {part}:1 does not match input row 1", "'id'", "--overwrite"],
    )
    assert part.read_text() == lines[0]
