"""Data: sources and their errors, SFT masks, packing, deterministic shuffling, synthetic tasks' disjointness."""

import json

import numpy as np
import pytest

from dlm_jax.data import encode, pipeline, sources, tasks
from dlm_jax.data.config import DataConfig
from dlm_jax.data.tokenizer import HFTokenizer, SimpleTokenizer
from dlm_jax.evaluation import scorers
from dlm_jax.evaluation.tasks import DATA_DIR as DREAM_PLANNING
from dlm_jax.training.config import TrainConfig


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_malformed_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        sources.JsonlSource(str(f))[1]  # records are parsed lazily, when read


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path=.*nope.jsonl.*no such file"):
        sources.open_source("jsonl", str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="needs data.path"):
        sources.open_source("parquet", None)


def test_parquet_and_arrayrecord_sources_read_back(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from array_record.python.array_record_module import ArrayRecordWriter

    rows = [{"text": f"doc {i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    assert list(sources.open_source("parquet", str(tmp_path / "a.parquet"))) == rows
    writer = ArrayRecordWriter(str(tmp_path / "a.array_record"), "group_size:1")
    for r in rows:
        writer.write(json.dumps(r).encode())
    writer.close()
    src = sources.open_source("arrayrecord", str(tmp_path / "a.array_record"))
    assert [src[i] for i in range(len(src))] == rows


def test_sft_masks_dream_format_hand_checked():
    tok = SimpleTokenizer.build(["what is two ? two ."], level="word")
    rec = {"prompt": [{"role": "user", "content": "what is two ?"}], "response": "two ."}
    ex = encode.encode_sft(rec, tok, "dream", 10)
    assert tok.decode(ex["input_ids"][:6]) == "what is two ? two ."
    assert ex["input_ids"][6:].tolist() == [tok.eos_id] * 4
    assert ex["prompt_mask"].tolist() == [1] * 4 + [0] * 6
    assert ex["loss_mask"].tolist() == [0] * 4 + [1] * 6  # response + EOS + EOS pads
    no_pad = encode.encode_sft(rec, tok, "dream", 10, pad_loss=False)
    assert no_pad["loss_mask"].tolist() == [0] * 4 + [1] * 3 + [0] * 3
    assert no_pad["attention_mask"].tolist() == [1] * 7 + [0] * 3


def test_sft_formats_tulu_and_s1k(tmp_path):
    tok = SimpleTokenizer.build(["hi there q a"], level="word")
    tulu = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]}
    assert encode.sft_texts(tulu, "messages", tok, "r") == ("hi", "there")
    assert encode.sft_texts({"question": "q", "answer": "a"}, "s1k", tok, "r") == ("q", "a")
    with pytest.raises(ValueError, match="r: data.format='dream' needs key 'response'"):
        encode.sft_texts({"prompt": []}, "dream", tok, "r")


def test_too_long_sequence_errors_unless_truncation_is_asked(tmp_path):
    f = _write_jsonl(tmp_path / "sft.jsonl", [{"input": "a b", "output": "c d e f g h"}])
    data = DataConfig(kind="jsonl", path=str(f), format="pairs", options={"level": "word"})
    train = TrainConfig(batch_size=1, seq_len=6)
    recs = pipeline.load_records(data, "train")
    tok = pipeline.build_tokenizer(data, recs)
    with pytest.raises(ValueError, match=r"sft\.jsonl:1: 9 tokens is longer than train\.seq_len=6.*data\.truncate"):
        next(iter(pipeline.make_dataset(recs, data, train, tok)))
    data = DataConfig(kind="jsonl", path=str(f), format="pairs", truncate=True, options={"level": "word"})
    batch = next(iter(pipeline.make_dataset(recs, data, train, tok)))
    assert batch["input_ids"].shape == (1, 6)


def test_packing_concatenates_documents_with_eos(tmp_path):
    docs = [{"text": t} for t in ["ab", "cde", "f", "ghij"]]
    f = _write_jsonl(tmp_path / "docs.jsonl", docs)
    data = DataConfig(kind="jsonl", path=str(f), shuffle=False)
    train = TrainConfig(batch_size=2, seq_len=4)
    recs = pipeline.load_records(data, "train")
    tok = pipeline.build_tokenizer(data, recs)
    it = iter(pipeline.make_dataset(recs, data, train, tok))
    rows = np.concatenate([next(it)["input_ids"] for _ in range(2)]).reshape(-1)
    stream = [i for d in docs for i in tok.encode(d["text"]) + [tok.eos_id]]
    assert rows.tolist() == (stream * 2)[:16]


def test_shuffle_is_deterministic_in_the_seed_and_resumable(tmp_path):
    f = _write_jsonl(tmp_path / "d.jsonl", [{"input": str(i), "output": str(i)} for i in range(20)])
    data = DataConfig(kind="jsonl", path=str(f), format="pairs")
    recs = pipeline.load_records(data, "train")
    tok = pipeline.build_tokenizer(data, recs)

    def first(seed, n=6):
        it = iter(pipeline.make_dataset(recs, data, TrainConfig(batch_size=2, seq_len=8, seed=seed), tok))
        return [next(it)["input_ids"].tolist() for _ in range(n)], it

    a, it = first(0)
    assert first(0)[0] == a and first(1)[0] != a
    state = it.get_state()
    after = next(it)["input_ids"].tolist()
    fresh = iter(pipeline.make_dataset(recs, data, TrainConfig(batch_size=2, seq_len=8, seed=0), tok))
    fresh.set_state(state)
    assert next(fresh)["input_ids"].tolist() == after


def test_hf_tokenizer_from_local_folder_with_chat_template(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<mask>", "hello", "world", "user", ":"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", mask_token="<mask>")
    fast.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    fast.save_pretrained(tmp_path / "tok")
    tok = HFTokenizer(tmp_path / "tok")
    assert (tok.eos_id, tok.mask_id, tok.vocab_size) == (0, 1, 6)
    assert tok.encode(tok.chat_prompt([{"role": "user", "content": "hello world"}])) == [4, 5, 2, 3]
    with pytest.raises(FileNotFoundError, match="no such tokenizer folder"):
        HFTokenizer(tmp_path / "missing")


def _dream_inputs(prefix):
    return {json.loads(line)["input"] for f in DREAM_PLANNING.glob(f"{prefix}*.jsonl")
            for line in f.read_text().splitlines()}


def test_sudoku_generator_is_valid_and_disjoint_from_dream_tests():
    test_inputs = _dream_inputs("sudoku")
    assert {tasks.input_hash(x) for x in test_inputs} <= tasks.heldout_hashes()["sudoku"]
    recs = tasks.sudoku_records(3000, seed=0, min_given=10, max_given=12)  # dense puzzles collide most easily
    assert not {r["input"] for r in recs} & test_inputs
    for r in recs[:200]:
        grid = [[int(c) for c in row] for row in r["output"].split("\n")]
        assert all(sorted(row) == [1, 2, 3, 4] for row in grid)
        assert all(sorted(col) == [1, 2, 3, 4] for col in zip(*grid, strict=True))
        puzzle = r["input"].replace("\n", "")
        assert all(p in ("0", s) for p, s in zip(puzzle, r["output"].replace("\n", ""), strict=True))


def test_countdown_generator_is_valid_and_disjoint_from_dream_tests():
    test_inputs = _dream_inputs("cd")
    assert {tasks.input_hash(x) for x in test_inputs} <= tasks.heldout_hashes()["countdown"]
    recs = tasks.countdown_records(500, seed=0, num_operands=3)
    assert not {r["input"] for r in recs} & test_inputs
    assert all(scorers.countdown_correct(r["input"], r["output"]) for r in recs)
    assert not scorers.countdown_correct("15,44,79,50", "44-15=29,79-29=51")
    assert scorers.countdown_correct("15,44,79,50", "44-15=29,79-29=50")  # a line of Dream's cd3 test set


def test_reverse_curse_facts_are_unique_both_ways():
    facts = tasks.reverse_curse_facts(100, seed=3)
    assert len({f.name for f in facts}) == 100 and len({f.description for f in facts}) == 100
    assert facts == tasks.reverse_curse_facts(100, seed=3)
    assert facts[0].forward_text == f"{facts[0].name} is {facts[0].description} ."
    assert tasks.arithmetic_records(3, seed=0) == tasks.arithmetic_records(3, seed=0)
    assert all(str(eval(r["input"][:-1])) == r["output"] for r in tasks.arithmetic_records(50, seed=1))
