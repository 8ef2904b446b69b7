"""Built-in task scorers on hand-made cases, task-file errors, and `dlm-jax eval` end to end on a tiny model."""

import json
import math

import jax
import numpy as np
import pytest

from dlm_jax.api import DiffusionLM
from dlm_jax.cli import main
from dlm_jax.data.tokenizer import SimpleTokenizer
from dlm_jax.evaluation import scorers
from dlm_jax.evaluation.batching import pack_targets
from dlm_jax.evaluation.likelihood import chain_rule_log_probs
from dlm_jax.evaluation.tasks import DATA_DIR, read_jsonl
from dlm_jax.models.config import ModelConfig


def test_countdown_metric_hand_cases():
    assert scorers.countdown_correct("15,44,79,50", "44-15=29,79-29=50")
    # A different but valid chain also counts.
    assert scorers.countdown_correct("3,85,5,30", "85+5=90,90/3=30")
    assert scorers.countdown_correct("2,3,4,20", "2+3=5,5*4=20")
    assert scorers.countdown_correct("2,3,4,20", "3+2=5,4*5=20")
    assert not scorers.countdown_correct("15,44,79,50", "44+15=59,79-59=20")  # wrong target
    assert not scorers.countdown_correct("15,44,79,50", "44-15=28,79-28=51")  # arithmetic error
    assert not scorers.countdown_correct("15,44,79,50", "79-29=50")  # uses 29 which is not available
    assert not scorers.countdown_correct("2,3,4,20", "4*5=20")  # 2 and 3 never used
    assert not scorers.countdown_correct("2,3,4,9", "2+3=5,5+4=9,9+2=11")  # 2 used twice
    assert not scorers.countdown_correct("7,2,9,4", "7/2=3.5")
    assert not scorers.countdown_correct("15,44,79,50", "")
    with pytest.raises(ValueError, match="countdown problem"):
        scorers.countdown_correct("a,b", "1+1=2")


def test_sudoku_metric_hand_cases():
    puzzle = "1000\n0002\n4003\n0000"
    assert scorers.sudoku_valid(puzzle, "1234\n3412\n4123\n2341")
    assert scorers.sudoku_valid(puzzle, "1234\n3412\n4123\n2341\n\nInput:")  # trailing text is cut
    assert not scorers.sudoku_valid(puzzle, "2134\n3412\n4123\n1243")  # changes a given cell
    assert not scorers.sudoku_valid(puzzle, "1234\n3412\n4123\n2314")  # column repeats
    assert not scorers.sudoku_valid(puzzle, "1234\n3412\n412")
    assert not scorers.sudoku_valid("0000\n0000\n0000\n0000", "1234\n2143\n3412\n4321")  # a 2x2 box repeats


def test_dream_gold_answers_all_score_correct():
    for name in ("cd3_test", "cd4_test", "cd5_test"):
        rows = read_jsonl(DATA_DIR / f"{name}.jsonl", ("input", "output"))
        assert len(rows) == 1000
        assert all(scorers.countdown_correct(r["input"], r["output"]) for r in rows)
    rows = read_jsonl(DATA_DIR / "sudoku_4x4_10.jsonl", ("input", "output"))
    assert len(rows) == 108 and all(scorers.sudoku_valid(r["input"], r["output"]) for r in rows)


def test_gsm8k_extraction_and_normalisation():
    answer = "She sells 16 - 3 - 4 = 9 eggs.\n#### 1,080"
    assert scorers.gsm8k_gold(answer) == "1080"
    assert scorers.gsm8k_correct(answer, "so 1080 dollars.\n#### $1,080.00")
    assert scorers.gsm8k_extract("The answer is 7.", "strict") is None
    assert scorers.gsm8k_correct(answer, "... she earns 1080.", "flexible")
    assert not scorers.gsm8k_correct(answer, "#### 1081")
    assert scorers.normalize_number("-0.50") == "-0.5"
    with pytest.raises(ValueError, match="no '#### <number>' line"):
        scorers.gsm8k_gold("just text")


def test_reverse_curse_match():
    assert scorers.answer_matches("the mayor of Orrin .", "The mayor of  Orrin . extra")
    assert not scorers.answer_matches("the mayor of Orrin .", "the mayor of Ostmere .")


def test_bad_task_files_name_file_and_line(tmp_path):
    bad = tmp_path / "cd.jsonl"
    bad.write_text('{"input": "1,2,3", "output": "1+2=3"}\n{"input": 5}\n')
    with pytest.raises(ValueError, match=r"cd.jsonl:2: missing string field\(s\) \['input', 'output'\]"):
        read_jsonl(bad, ("input", "output"))
    bad.write_text('{"input": "1,2,3", "output": "1+2=3"}\nnot json\n')
    with pytest.raises(ValueError, match=r"cd.jsonl:2: malformed JSON"):
        read_jsonl(bad, ("input", "output"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    texts = ["Ada is the queen of Zor .", "the queen of Zor is Ada ."]
    tok = SimpleTokenizer.build(texts + [open(DATA_DIR / "cd3_test.jsonl").read()[:2000]], level="char")
    cfg = ModelConfig(
        family="smdm",
        vocab_size=tok.vocab_size,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        mask_token_id=tok.mask_id,
        pad_token_id=tok.pad_id,
        eos_token_id=tok.eos_id,
        max_position_embeddings=2048,
    )
    model = DiffusionLM.init(cfg, seed=0)
    model.params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, model.params)
    path = tmp_path_factory.mktemp("evalcli") / "model"
    model.save_pretrained(path, format="dlm_jax")
    tok.save_pretrained(path)
    return path, tok


@pytest.mark.slow
def test_dlm_jax_eval_end_to_end(tiny_model_dir, tmp_path, capsys):
    path, tok = tiny_model_dir
    corpus = tmp_path / "val.jsonl"
    docs = ["Ada is the queen", "Zor is the queen of Ada ."]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "res.json"
    rc = main(
        [
            "eval",
            "--model",
            str(path),
            "--tasks",
            "countdown3,perplexity",
            "--limit",
            "2",
            "--num-fewshot",
            "1",
            "--max-new-tokens",
            "8",
            "--steps",
            "8",
            "--estimator",
            "chain",
            "--data",
            f"perplexity={corpus}",
            "--log-samples",
            "--output",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    # Countdown: the reported accuracy is Dream's metric applied to the logged predictions.
    samples = res["samples"]["countdown3"]
    want = np.mean([scorers.countdown_correct(s["input"], s["prediction"].strip()) for s in samples])
    assert len(samples) == 2 and res["results"]["countdown3"]["acc,none"] == pytest.approx(want)
    # Perplexity with the chain rule equals exp(mean NLL) computed directly on the same windows.
    model = DiffusionLM.from_pretrained(path)
    ids = [tok.encode(d) for d in docs]
    lp, _ = chain_rule_log_probs(
        model.params, *pack_targets([i[:1] for i in ids], [i[1:] for i in ids], max_length=64), config=model.config
    )
    ppl = math.exp(-float(np.asarray(lp).sum()) / sum(len(i) - 1 for i in ids))
    assert res["results"]["perplexity"]["ppl,none"] == pytest.approx(ppl, rel=1e-4)
    cfg = res["config"]
    assert cfg["estimator"]["kind"] == "chain" and cfg["sampler"]["steps"] == 8
    assert cfg["model_config"]["vocab_size"] == tok.vocab_size and res["dlm_jax_version"]
    assert res["configs"]["countdown3"]["num_fewshot"] == 1


def test_dlm_jax_eval_bad_input(tiny_model_dir, tmp_path, capsys):
    path, _ = tiny_model_dir
    assert main(["eval", "--model", str(path), "--tasks", "countdown9"]) == 2
    assert "unknown task(s) ['countdown9']" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "1,2,3", "output": "1+2=3"}\n{"oops": 1}\n')
    assert main(["eval", "--model", str(path), "--tasks", "countdown3", "--data", str(bad), "--num-fewshot", "0"]) == 2
    assert "bad.jsonl:2: missing string field(s)" in capsys.readouterr().err
    assert main(["eval", "--model", str(path), "--tasks", "perplexity", "--mc-num", "10", "--mc-batch-size", "4"]) == 2
    assert "mc_num=10 is not divisible by mc_batch_size=4" in capsys.readouterr().err
