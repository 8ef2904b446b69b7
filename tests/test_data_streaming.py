"""Streaming data: lazy JSONL/Parquet/tfds sources, bounded validation, per-shard resumable streams, flat RSS."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dlm_jax.data import jsonl, pipeline, sources
from dlm_jax.data.config import DataConfig
from dlm_jax.training.config import TrainConfig


def test_jsonl_source_reads_lines_lazily_like_iter_jsonl(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "_CHUNK", 7)  # lines cross many scan chunks
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes('{"text": "zwölf"}\r\n\n   \n{"text": "b", "n": [1, 2]}\n'.encode())
    b.write_bytes(b'\t\n{"text": "c"}\n{"text": oops}\n{"text": "last, no newline"}')
    src = sources.open_source("jsonl", f"{a},{b}")
    expected = [(a, 1, {"text": "zwölf"}), (a, 4, {"text": "b", "n": [1, 2]}), (b, 2, {"text": "c"}),
                (b, 3, None), (b, 4, {"text": "last, no newline"})]
    assert len(src) == 5
    for i, (file, line, record) in enumerate(expected):
        assert src.origin[i] == f"{file}:{line}"
        if record is None:
            with pytest.raises(ValueError, match=r"b\.jsonl:3: malformed JSON"):
                src[i]
        else:
            assert src[i] == record and src[i - 5] == record
    with pytest.raises(IndexError):
        src[5]
    assert [r["text"] for _, r in jsonl.iter_jsonl(a)] == ["zwölf", "b"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="no records found"):
        sources.open_source("jsonl", str(empty))


def test_parquet_and_arrayrecord_sources_read_on_demand_and_iterate(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from array_record.python.array_record_module import ArrayRecordWriter

    rows = [{"text": f"doc {i}", "n": i} for i in range(23)]
    pq.write_table(pa.Table.from_pylist(rows[:17]), tmp_path / "a.parquet", row_group_size=3)
    pq.write_table(pa.Table.from_pylist(rows[17:]), tmp_path / "b.parquet", row_group_size=4)
    src = sources.open_source("parquet", str(tmp_path))
    order = np.random.default_rng(0).permutation(len(rows))
    assert [src[int(i)] for i in order] == [rows[i] for i in order]
    assert list(src) == rows and len(src._cache) <= src.CACHED_GROUPS
    assert src.origin[18] == f"{tmp_path / 'b.parquet'}:row 1"
    writer = ArrayRecordWriter(str(tmp_path / "a.array_record"), "group_size:1")
    for r in rows:
        writer.write(json.dumps(r).encode())
    writer.close()
    records = sources.open_source("arrayrecord", str(tmp_path / "a.array_record"))
    assert list(records) == rows and records[-1] == rows[-1]  # iteration (the tokenizer's pass) stops at the end


def test_tfds_source_from_a_locally_built_dataset(tmp_path):
    import tensorflow_datasets as tfds

    class DlmTinyCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train", 6), "validation": self._generate_examples("val", 3)}

        def _generate_examples(self, split, n):
            for i in range(n):
                yield i, {"text": f"{split} doc {i}"}

    DlmTinyCorpus(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    data = DataConfig(kind="tfds", path="dlm_tiny_corpus", val_path="dlm_tiny_corpus", pack=False, shuffle=False,
                      options={"data_dir": str(tmp_path), "level": "word"})
    train, val = pipeline.load_records(data, "train"), pipeline.load_records(data, "val")
    assert sorted(r["text"] for r in train) == [f"train doc {i}" for i in range(6)]
    assert sorted(r["text"] for r in val) == [f"val doc {i}" for i in range(3)]
    tok = pipeline.build_tokenizer(data, [*train, *val])
    batch = next(iter(pipeline.make_dataset(train, data, TrainConfig(batch_size=6, seq_len=5), tok)))
    assert [tok.decode(row) for row in batch["input_ids"]] == [train[i]["text"] for i in range(6)]
    assert train.origin[2] == "tfds:dlm_tiny_corpus[train] record 2"
    with pytest.raises(FileNotFoundError, match="data.path='nope': no prepared tfds dataset"):
        sources.open_source("tfds", "nope", {"data_dir": str(tmp_path)})


class _CountingSource:
    """A source that counts the records read from it."""

    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        self.reads += 1
        return self.inner[index]


def test_shards_are_disjoint_resumable_and_validation_is_bounded(tmp_path):
    docs = [{"text": f"d{i} w{i % 7} w{i % 5}"} for i in range(3000)]  # 4 tokens with EOS: rows end on a document
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in docs))
    data = DataConfig(kind="jsonl", path=str(f), val_path=str(f), options={"level": "word"})
    tc = TrainConfig(batch_size=4, seq_len=8, eval_batches=2, seed=3)
    recs = pipeline.load_records(data, "train")
    tok = pipeline.build_tokenizer(data, recs)
    streams = []
    for shard in [(0, 2), (1, 2)]:
        it = iter(pipeline.make_dataset(recs, data, tc, tok, shard=shard))
        batches = [next(it)["input_ids"] for _ in range(3)]
        state = it.get_state()
        after = next(it)["input_ids"]
        resumed = iter(pipeline.make_dataset(recs, data, tc, tok, shard=shard))
        pipeline.restore_state(resumed, json.loads(json.dumps(state)))  # as the trainer resumes from a checkpoint
        np.testing.assert_array_equal(next(resumed)["input_ids"], after)
        assert batches[0].shape == (2, 8)
        streams.append(tok.decode(np.concatenate(batches).reshape(-1)).split())
    # packed shard k reads documents k, k+2, k+4, ... (shuffled): every d<i> of shard k has i % 2 == k
    for k, words in enumerate(streams):
        ids = [int(w[1:]) for w in words if w.startswith("d")]
        assert len(ids) > 8 and {i % 2 for i in ids} == {k} and ids != sorted(ids)
    val = _CountingSource(pipeline.load_records(data, "val"))
    got = pipeline.val_batches(pipeline.make_dataset(val, data, tc, tok, split="val", shard=(0, 2)),
                               tc.eval_batches, 2)
    assert len(got) == 2 and got[0]["input_ids"].shape == (2, 8)
    assert val.reads < 1000 < len(val)  # a bounded prefix, not the whole validation file


_CHILD = textwrap.dedent("""
    import itertools, resource, sys
    from dlm_jax.data import pipeline
    from dlm_jax.data.config import DataConfig
    from dlm_jax.training.config import TrainConfig
    path = sys.argv[1]
    data = DataConfig(kind="jsonl", path=path, val_path=path, options={"level": "word"})
    tc = TrainConfig(batch_size=8, seq_len=64, eval_batches=2)
    train, val = pipeline.load_records(data, "train"), pipeline.load_records(data, "val")
    tok = pipeline.build_tokenizer(data, itertools.chain(train, val))  # as the trainer does: one streamed pass
    it = iter(pipeline.make_dataset(train, data, tc, tok))
    seen = sum(int(next(it)["input_ids"].sum() > 0) for _ in range(20))
    vals = pipeline.val_batches(pipeline.make_dataset(val, data, tc, tok, split="val"), tc.eval_batches, 8)
    print(len(train), seen, len(vals), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_peak_rss_does_not_grow_with_the_corpus(tmp_path):
    """Two children read a ~4 MB and a ~40 MB corpus; holding the corpus would raise the peak RSS by ~70 MB."""
    words = " ".join(f"{w * 40}" for w in ("alpha", "beta", "gamma", "delta", "omega"))  # ~1 KB, 5 symbols
    block = (json.dumps({"text": words}) + "\n") * 1000
    paths = [tmp_path / "small.jsonl", tmp_path / "big.jsonl"]
    for path, blocks in zip(paths, (4, 40), strict=True):
        with path.open("w") as f:
            for _ in range(blocks):
                f.write(block)
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(p)], stdout=subprocess.PIPE, text=True)
                for p in paths]  # concurrently: each spends most of its time importing
    outs = [child.communicate(timeout=300)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0]
    small, big = ([int(v) for v in out.split()] for out in outs)
    assert (small[:3], big[:3]) == ([4000, 20, 2], [40000, 20, 2])
    corpus_kb = (paths[1].stat().st_size - paths[0].stat().st_size) // 1024  # ~36 MB more data
    assert big[3] - small[3] < corpus_kb // 10, (small[3], big[3], corpus_kb)
