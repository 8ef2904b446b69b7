"""One model folder carries everything: the built-in tokenizer as HF files, one loader for every
folder kind, `--tokenizer`, the "no tokenizer" error, and the task settings `eval` defaults to."""

import json
import shutil

import numpy as np
import pytest
from cli_checks import assert_one_line_error, run_cli

from dlm_jax.api import DiffusionLM
from dlm_jax.data.tasks import reverse_curse_facts, sudoku_records
from dlm_jax.data.tokenizer import SPECIALS, HFTokenizer, SimpleTokenizer, load_tokenizer
from dlm_jax.data.training_record import write_training_record
from dlm_jax.evaluation.tasks import DATA_DIR
from dlm_jax.models.config import ModelConfig

WORD_CORPUS = ["Ada is the queen of Zor .", "what?! yes, no... 3.14 -- (x_y) café naïve", "tab\tand  two"]
CHAR_CORPUS = ["1200\n0034\n\n", "a b?! é\t(x)", "Output: 12+3=15, ok."]
# Texts with unknown symbols, literal special tokens, repeated punctuation and odd spacing.
PROBES = ["Ada is the queen", "unknown words , here ?!", "x<mask>y <eos> z", "  lead and trail  ", "a\nb\tc"]


def _hf(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@pytest.mark.parametrize("level,corpus", [("word", WORD_CORPUS), ("char", CHAR_CORPUS)])
def test_builtin_tokenizer_exports_an_hf_tokenizer_that_encodes_and_decodes_the_same(tmp_path, level, corpus):
    tok = SimpleTokenizer.build(corpus, level=level)
    tok.save_pretrained(tmp_path)
    hf = _hf(tmp_path)
    assert len(hf) == tok.vocab_size
    assert [hf.pad_token, hf.bos_token, hf.eos_token, hf.mask_token, hf.unk_token] == list(SPECIALS)
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.mask_token_id) == (0, 1, 2, 3)
    for text in corpus + PROBES:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf(text)["input_ids"] == ids  # no BOS/EOS added: the model never saw them around a text
        with_specials = [1, *ids, 2, 3, 0]
        for skip in (True, False):
            assert hf.decode(with_specials, skip_special_tokens=skip) == tok.decode(with_specials, skip), (text, skip)
    if level == "char":
        assert all(hf.decode(hf.encode(text)) == text for text in corpus)
    messages = [{"role": "user", "content": "Ada is"}, {"role": "assistant", "content": "the queen"}]
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == tok.chat_prompt(messages)
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["mask_token"] == "<mask>"


def test_word_level_decoding_joins_words_with_spaces():
    tok = SimpleTokenizer.build(WORD_CORPUS, level="word")
    assert tok.encode("what?!") == [tok.index["what"], tok.index["?"], tok.index["!"]]
    assert tok.decode(tok.encode("Ada is the queen of Zor.")) == "Ada is the queen of Zor ."
    assert tok.decode([tok.mask_id, tok.index["Ada"], 999], skip_special_tokens=False) == "<mask> Ada"


def _folders(tmp_path):
    """Every folder kind load_tokenizer opens: a train export, an old run's tokenizer.json, an HF folder."""
    tok = SimpleTokenizer.build(WORD_CORPUS, level="word")
    exported, legacy, hf_dir = tmp_path / "exported", tmp_path / "legacy", tmp_path / "hf"
    tok.save_pretrained(exported)
    legacy.mkdir()
    (legacy / "tokenizer.json").write_text(json.dumps({"level": "word", "symbols": tok.symbols[len(SPECIALS):]}))
    _hf(exported).save_pretrained(hf_dir)  # as transformers itself writes it
    return tok, exported, legacy, hf_dir


def test_load_tokenizer_opens_every_folder_kind_the_same_way(tmp_path):
    tok, exported, legacy, hf_dir = _folders(tmp_path)
    text = "Ada is the queen of Zor ."
    for path, kind in [(exported, HFTokenizer), (exported / "tokenizer.json", HFTokenizer), (hf_dir, HFTokenizer),
                       (legacy, SimpleTokenizer), (legacy / "tokenizer.json", SimpleTokenizer)]:
        loaded = load_tokenizer(path)
        assert isinstance(loaded, kind), path
        assert (loaded.vocab_size, len(loaded), loaded.pad_id, loaded.eos_id, loaded.mask_id) == (
            tok.vocab_size, tok.vocab_size, 0, 2, 3)
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode([1, *tok.encode(text), 2]) == text
        assert loaded.chat_prompt([{"role": "user", "content": text}]) == text


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none'}: no such tokenizer file or folder"):
        load_tokenizer(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'}: no tokenizer files"):
        load_tokenizer(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    with pytest.raises(ValueError, match=f"{broken}: transformers cannot load this tokenizer"):
        load_tokenizer(broken)
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON tokenizer file"):
        load_tokenizer(broken)


def _tiny_model(tmp_path, tok, *, context=64, name="model"):
    cfg = ModelConfig(family="smdm", vocab_size=tok.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                      intermediate_size=32, mask_token_id=tok.mask_id, pad_token_id=tok.pad_id,
                      eos_token_id=tok.eos_id, max_position_embeddings=context)
    model = DiffusionLM.init(cfg, seed=0)
    folder = tmp_path / name
    model.save_pretrained(folder, format="dlm_jax")
    return model, folder


def test_the_api_decodes_with_whatever_load_tokenizer_returns(tmp_path):
    tok, exported, legacy, _ = _folders(tmp_path)
    model, _ = _tiny_model(tmp_path, tok)
    ids = np.array([tok.encode("Ada is the")])
    base = model.diffusion_generate(ids, max_new_tokens=4, steps=4, alg="entropy")
    for folder in (exported, legacy):
        out = model.diffusion_generate(ids, max_new_tokens=4, steps=4, alg="entropy", tokenizer=load_tokenizer(folder))
        assert out.texts == [tok.decode(base.completions[0])]


def test_cli_without_a_tokenizer_says_pass_tokenizer(data_dir, tmp_path, capsys):
    folder = data_dir / "parity" / "dream" / "model"
    no_tok = f"no tokenizer in {folder}: pass --tokenizer"
    assert_one_line_error(["generate", "--model", str(folder), "--prompt", "hello"], capsys, contains=no_tok)
    assert_one_line_error(["chat", "--model", str(folder)], capsys, contains=no_tok)
    msg = assert_one_line_error(["eval", "--model", str(folder), "--tasks", "sudoku"], capsys, contains=no_tok)
    assert "sentencepiece" not in msg.lower()
    missing = tmp_path / "nowhere"
    assert_one_line_error(["chat", "--model", str(missing)], capsys, contains=f"model folder {missing} does not exist")
    assert_one_line_error(["generate", "--model", str(folder), "--tokenizer", str(missing), "--prompt", "hi"], capsys,
                          contains=f"--tokenizer {missing}: no such tokenizer file or folder")


def test_tokenizer_flag_supplies_the_tokenizer_of_a_bare_model_folder(tmp_path, capsys):
    tok, exported, _, _ = _folders(tmp_path)
    model, folder = _tiny_model(tmp_path, tok)
    sampler = ["--max-new-tokens", "4", "--steps", "4", "--alg", "entropy"]
    rc, out, err = run_cli(["generate", "--model", str(folder), "--tokenizer", str(exported),
                            "--prompt", "Ada is the", *sampler], capsys)
    assert rc == 0, err
    expected = model.diffusion_generate(np.array([tok.encode("Ada is the")]), max_new_tokens=4, steps=4, alg="entropy")
    assert out.splitlines()[-1] == tok.decode(expected.completions[0])


@pytest.fixture
def canvases(monkeypatch):
    """The `max_new_tokens` of every generation an eval task runs."""
    from dlm_jax.evaluation import tasks

    seen, real = [], tasks.generate_continuations

    def spy(*args, **kwargs):
        seen.append(kwargs["max_new_tokens"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "generate_continuations", spy)
    return seen


def _eval(folder, out, capsys, task, *extra):
    rc, _, err = run_cli(["eval", "--model", str(folder), "--tasks", task, "--output", str(out), "--log-samples",
                          "--batch-size", "32", *extra], capsys)
    assert rc == 0, err
    return json.loads(out.read_text())


@pytest.mark.slow
def test_eval_defaults_to_the_reverse_curse_facts_and_canvas_the_model_was_trained_on(tmp_path, capsys, canvases):
    facts = reverse_curse_facts(5, seed=7)
    tok = SimpleTokenizer.build([f.forward_text for f in facts], level="word")
    _, folder = _tiny_model(tmp_path, tok)
    tok.save_pretrained(folder)
    data = {"kind": "reverse_curse", "task_seed": 7, "options": {"num_facts": 5}, "format": "text"}
    write_training_record(folder, data=data, seq_len=12, objective="mdm", steps=1)
    res = _eval(folder, tmp_path / "a.json", capsys, "reverse_curse")
    forward = [s for s in res["samples"]["reverse_curse"] if s["direction"] == "forward"]
    assert [s["prompt"] for s in forward] == [f"{f.name} is" for f in facts]
    assert res["configs"]["reverse_curse"]["dataset_path"].endswith("(num_facts=5, seed=7)")
    assert res["configs"]["reverse_curse"]["task_settings"] == str(folder / "dlm_jax_training.json")
    # The canvas fills the 12-token training row: `NAME is` (3 tokens) + 9, `DESCRIPTION is` (5 tokens) + 7.
    assert canvases == [9, 7]
    res = _eval(folder, tmp_path / "b.json", capsys, "reverse_curse", "--option", "facts_seed=0")  # options win
    forward = [s for s in res["samples"]["reverse_curse"] if s["direction"] == "forward"]
    assert [s["prompt"] for s in forward] == [f"{f.name} is" for f in reverse_curse_facts(5, seed=0)]
    assert canvases == [9, 7, 9, 7]


def test_eval_sudoku_uses_the_trained_zero_shot_layout_or_says_why_dreams_does_not_fit(tmp_path, capsys, canvases):
    records = sudoku_records(50, seed=0, min_given=6, max_given=12)
    tok = SimpleTokenizer.build([r[k] for r in records for k in ("input", "output")], level="char")
    _, folder = _tiny_model(tmp_path, tok)
    tok.save_pretrained(folder)
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    write_training_record(folder, data={"kind": "sudoku", "task_seed": 1, "options": {}, "format": "text"},
                          seq_len=40, objective="sft", steps=1)
    res = _eval(folder, tmp_path / "s.json", capsys, "sudoku", "--limit", "3")
    config = res["configs"]["sudoku"]
    assert (config["num_fewshot"], config["prompt"]) == (0, "trained")
    rows = [json.loads(line) for line in (DATA_DIR / "sudoku_4x4_10.jsonl").read_text().splitlines()]
    assert [s["input"] for s in res["samples"]["sudoku"]] == [r["input"] for r in rows[:3]]
    # 20 prompt tokens (`INPUT\n`: 4 rows of 4 digits and 4 newlines) + 20 new tokens fill the training row.
    assert canvases == [20]
    assert_one_line_error(["eval", "--model", str(folder), "--tasks", "sudoku", "--num-fewshot", "2"], capsys,
                          contains=["--num-fewshot 2", "--option prompt=dream"])
    assert_one_line_error(["eval", "--model", str(bare), "--tasks", "sudoku"], capsys,
                          contains=["Dream's 8-shot prompt is", "context of 64", "use --num-fewshot 0"])
    assert_one_line_error(["eval", "--model", str(bare), "--tasks", "sudoku", "--option", "prompt=trained"], capsys,
                          contains="records no training on sudoku")


def test_lm_eval_backend_opens_the_same_folders_and_names_a_missing_tokenizer(data_dir, tmp_path):
    from dlm_jax.evaluation.harness import DLMJaxLM

    folder = data_dir / "parity" / "dream" / "model"
    with pytest.raises(FileNotFoundError, match=f"no tokenizer in {folder}: pass tokenizer=PATH in --model_args"):
        DLMJaxLM(pretrained=str(folder))
    tok, exported, _, _ = _folders(tmp_path)
    _, model_dir = _tiny_model(tmp_path, tok)
    lm = DLMJaxLM(pretrained=str(model_dir), tokenizer=str(exported))
    assert lm.tok_encode("Ada is the queen") == tok.encode("Ada is the queen")
    assert lm.apply_chat_template([{"role": "user", "content": "Ada is"}]) == "Ada is"
