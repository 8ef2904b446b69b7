"""`dlm-jax generate` / `dlm-jax chat` on the tiny Dream checkpoint with an in-process word-level tokenizer."""

import io
import json

import hf_models
import numpy as np
import pytest

from dlm_jax import cli
from dlm_jax.api import DiffusionLM
from dlm_jax.commands.chat import MASK_GLYPH, render_canvas

TEMPLATE = (
    "{% for m in messages %}{{ 'w1' if m['role'] == 'user' else 'w2' }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}w3{% endif %}"
)


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    """A copy of the Dream parity checkpoint plus a 300-word tokenizer whose ids match the model's."""
    return hf_models.dream_with_word_tokenizer(data_dir, tmp_path_factory.mktemp("dream_tok") / "model", TEMPLATE)

@pytest.fixture(scope="module")
def api(model_dir):
    from transformers import AutoTokenizer

    return DiffusionLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


SAMPLER = ["--max-new-tokens", "8", "--steps", "4", "--alg", "entropy"]


def test_generate_text_prompt_matches_the_api_and_cuts_at_until(model_dir, api, capsys):
    model, tok = api
    ids = np.array([[5, 6, 7]])
    full = model.diffusion_generate(ids, max_new_tokens=8, steps=4, alg="entropy", tokenizer=tok).texts[0]
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    expected = full[: full.find(stop)]
    assert cli.main(["generate", "--model", str(model_dir), "--prompt", "w5 w6 w7", *SAMPLER]) == 0
    assert cli.main(["generate", "--model", str(model_dir), "--prompt", "w5 w6 w7", "--until", stop, *SAMPLER]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [full, expected]


def test_generate_jsonl_batch_matches_the_api_on_the_same_padded_batch(model_dir, api, tmp_path):
    model, _ = api
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "w5 w6 w7"}) + "\n" + json.dumps({"prompt_ids": [8, 9]}) + "\n")
    dst = tmp_path / "out" / "res.jsonl"
    argv = ["generate", "--model", str(model_dir), "--input-jsonl", str(src), "--output-jsonl", str(dst)]
    assert cli.main([*argv, "--pad-multiple", "1", *SAMPLER]) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    ids = np.array([[5, 6, 7], [298, 8, 9]])
    mask = np.array([[1, 1, 1], [0, 1, 1]])
    expected = model.diffusion_generate(ids, mask, max_new_tokens=8, steps=4, alg="entropy")
    assert [r["completion_ids"] for r in rows] == [c.tolist() for c in expected.completions]
    assert rows[0]["id"] == "a" and rows[1]["prompt_ids"] == [8, 9]
    assert [r["nfe"] for r in rows] == [4, 4]
    assert [(r["tokens_per_step"], r["forward_equivalents"]) for r in rows] == [(2.0, 4.0), (2.0, 4.0)]  # 8 in 4
    assert rows[0]["completion"] == " ".join(f"w{t}" for t in rows[0]["completion_ids"])
    assert cli.main([*argv, *SAMPLER]) == 2  # refuses to overwrite an existing output


def test_generate_prompt_ids_without_tokenizer(data_dir, capsys):
    folder = data_dir / "parity" / "dream" / "model"
    assert cli.main(["generate", "--model", str(folder), "--prompt", "hello", *SAMPLER]) == 2
    assert f"no tokenizer in {folder}: pass --tokenizer" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(folder), "--prompt-ids", "5,6,7", *SAMPLER]) == 0
    model = DiffusionLM.from_pretrained(folder)
    expected = model.diffusion_generate(np.array([[5, 6, 7]]), max_new_tokens=8, steps=4, alg="entropy")
    assert json.loads(capsys.readouterr().out) == expected.completions[0].tolist()


@pytest.mark.slow
def test_chat_reads_turns_from_stdin_and_applies_the_template(model_dir, api, capsys, monkeypatch):
    model, tok = api
    monkeypatch.setattr("sys.stdin", io.StringIO("w10 w11\nw12\n"))
    assert cli.main(["chat", "--model", str(model_dir), "--no-live", *SAMPLER]) == 0
    replies = [
        line[len("assistant> ") :] for line in capsys.readouterr().out.splitlines() if line.startswith("assistant> ")
    ]
    assert len(replies) == 2
    messages = [{"role": "user", "content": "w10 w11"}]
    prompt = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))["input_ids"]
    assert prompt == [1, 10, 11, 3]
    first = model.diffusion_generate([prompt], max_new_tokens=8, steps=4, alg="entropy", tokenizer=tok)
    assert replies[0] == first.texts[0]
    monkeypatch.setattr("sys.stdin", io.StringIO("w10 w11\n/exit\nw12\n"))
    assert cli.main(["chat", "--model", str(model_dir), "--live", "--delay", "0", *SAMPLER]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 1 and f"assistant> {replies[0]}" in out
    # piped output: the step callback prints each canvas while decoding runs; Dream's counts for 8 masks in 4 steps
    frames = out[: out.index("assistant> ")].splitlines()
    assert [frame.count(MASK_GLYPH) for frame in frames] == [7, 5, 3, 0]  # reveal 1, 2, 2, then the last 3


def test_chat_needs_a_chat_template_and_renders_masks(data_dir, model_dir, api, tmp_path, capsys):
    from transformers import AutoTokenizer

    folder = data_dir / "parity" / "dream" / "model"
    assert cli.main(["chat", "--model", str(folder)]) == 2
    assert f"no tokenizer in {folder}: pass --tokenizer" in capsys.readouterr().err
    plain = tmp_path / "no_template"
    untemplated = AutoTokenizer.from_pretrained(model_dir)
    untemplated.chat_template = None
    untemplated.save_pretrained(plain)
    assert cli.main(["chat", "--model", str(folder), "--tokenizer", str(plain)]) == 2
    assert f"the tokenizer in {plain} has no chat template" in capsys.readouterr().err
    _, tok = api
    text = render_canvas(tok, [5, 299, 6, 299], 299)
    assert text.plain == f"w5{MASK_GLYPH}w6{MASK_GLYPH}"
