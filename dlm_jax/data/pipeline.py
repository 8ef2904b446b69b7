"""Grain pipelines: records -> tokens -> (packed | padded | SFT) rows -> batches, seeded shuffle, per-process shards."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from dlm_jax.data import encode, sources, tasks
from dlm_jax.data.config import SYNTHETIC, DataConfig
from dlm_jax.data.shuffle import ShuffledEpochs
from dlm_jax.data.tokenizer import SimpleTokenizer, Tokenizer, load_tokenizer

# Whole batches are read ahead: a few are enough (grain's default, 500 elements, would encode 500 batches).
BATCH_READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


class Batching(Protocol):
    """The batch settings a pipeline reads (`dlm_jax.training.config.TrainConfig` has them all)."""

    batch_size: int
    seq_len: int
    seed: int
    eval_batches: int
    sft_pad_loss: bool


def synthetic_records(data: DataConfig, split: str) -> list[dict[str, Any]]:
    """Records of a built-in task. Reverse-curse: forward facts only (train == val: it is a memory task)."""
    opts = dict(data.options)
    if data.kind == "reverse_curse":
        facts = tasks.reverse_curse_facts(opts.get("num_facts", 64), seed=data.task_seed)
        return [{"text": f.forward_text} for f in facts]
    num = data.num_examples if split == "train" else data.val_examples
    seed = data.task_seed if split == "train" else data.task_seed + 1_000_003
    if data.kind == "sudoku":
        return tasks.sudoku_records(num, seed, **opts)
    if data.kind == "countdown":
        return tasks.countdown_records(num, seed, **opts)
    return tasks.arithmetic_records(num, seed, **opts)


def load_records(data: DataConfig, split: str) -> Sequence[dict[str, Any]]:
    """The raw records of `split` ("train" or "val") for `data`: a lazy random-access source for file kinds."""
    if data.kind in SYNTHETIC:
        return synthetic_records(data, split)
    path = data.path if split == "train" else data.val_path
    if split != "train" and not path:
        return []
    return sources.open_source(data.kind, path, data.options, split)


def _texts(record: dict[str, Any], data: DataConfig) -> list[str]:
    if _task_format(data) == "text":
        return [str(record.get(data.text_key, ""))]
    return [str(v) for v in record.values() if isinstance(v, str)]


def build_tokenizer(data: DataConfig, records: Iterable[dict[str, Any]], mask_token_id: int | None = None) -> Tokenizer:
    """The tokenizer at `data.tokenizer` (see `load_tokenizer`), else a `SimpleTokenizer` built over `records`.

    The records are streamed once (never held) to collect the vocabulary; with `data.tokenizer` they are not read.
    """
    if data.tokenizer:
        try:
            return load_tokenizer(data.tokenizer, mask_token_id=mask_token_id)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"data.tokenizer={data.tokenizer!r}: {e}") from None
    level = data.options.get("level", "word" if data.kind == "reverse_curse" else "char")
    return SimpleTokenizer.build((t for r in records for t in _texts(r, data)), level=level)


def _task_format(data: DataConfig) -> str:
    if data.kind in ("sudoku", "countdown", "arithmetic") and data.format == "text":
        return "pairs"
    return data.format


def _encoder(data: DataConfig, train: Batching, tokenizer: Tokenizer, origin: Any, size: int):
    fmt = _task_format(data)

    def where(index: int) -> str:
        index %= size  # grain passes the epoch-unrolled index through `repeat`
        return origin[index] if origin is not None else f"{data.kind} record {index}"

    if fmt == "text" and data.pack:
        return lambda i, r: encode.encode_text(r, tokenizer, data.text_key, where(i))
    if fmt == "text":
        return lambda i, r: encode.encode_padded_text(
            r, tokenizer, data.text_key, train.seq_len, data.truncate, where(i)
        )
    return lambda i, r: encode.encode_sft(
        r, tokenizer, fmt, train.seq_len, pad_loss=train.sft_pad_loss, truncate=data.truncate, where=where(i)
    )


def shard_rows(train: Batching, shard: tuple[int, int]) -> int:
    """Rows of each global batch that one data shard reads: `train.batch_size // count`.

    Example:
        >>> from dlm_jax.training.config import TrainConfig
        >>> shard_rows(TrainConfig(batch_size=32), (1, 4))
        8
    """
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"data shard {index} of {count}: expected 0 <= index < count")
    if train.batch_size % count:
        raise ValueError(
            f"train.batch_size={train.batch_size} must be divisible by the {count} data shards (processes)"
        )
    return train.batch_size // count


def make_dataset(
    records: Sequence[dict[str, Any]],
    data: DataConfig,
    train: Batching,
    tokenizer: Tokenizer,
    *,
    split: str = "train",
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """The batched grain dataset for `split`, as seen by data shard `shard = (index, count)`.

    Train: records are shuffled with `train.seed` (reshuffled each epoch) and repeated forever.
    Val: one ordered pass over at most `train.eval_batches` batches, the last one possibly short.
    Each batch holds this shard's `batch_size // count` rows of the global batch; the trainer takes
    (index, count) from `parallel.distributed.data_shard`, so a process encodes only the rows its
    devices hold. Unpacked data: rows are cut from the one global stream,
    so the global batch (and the iterator state) is the same for any shard count. Text with
    `data.pack` is concatenated (EOS between documents) and split into `seq_len` rows; there each
    shard packs its own strided subset of the documents (`index::count`), so its state is per shard.

    Example:
        >>> from dlm_jax.training.config import TrainConfig
        >>> data = DataConfig(kind="reverse_curse", pack=False, options={"num_facts": 4})
        >>> records = load_records(data, "train")
        >>> tok = build_tokenizer(data, records)
        >>> it = iter(make_dataset(records, data, TrainConfig(batch_size=2, seq_len=12), tok))
        >>> batch = next(it)
        >>> batch["input_ids"].shape, batch["input_ids"][0].tolist()  # one fact a row, EOS-padded
        ((2, 12), [7, 8, 18, 23, 19, 20, 13, 5, 2, 2, 2, 2])
        >>> tok.decode(batch["input_ids"][0])
        'Dradra Elren is the keeper of Lunaris .'
        >>> it.get_state()  # checkpointable: `it.set_state(state)` resumes at the next batch
        {'next_index': 1}
    """
    if len(records) == 0:
        raise ValueError(f"data ({data.kind}): the {split} split has no records")
    rows = shard_rows(train, shard)
    index, count = shard
    origin = getattr(records, "origin", None)
    ds = grain.MapDataset.source(records).map_with_index(_encoder(data, train, tokenizer, origin, len(records)))
    packed = _task_format(data) == "text" and data.pack
    if packed:
        ds = ds[index::count]
    whole = split == "train"  # validation keeps a short last batch (see `val_batches`)
    if split == "train":
        ds = ShuffledEpochs(ds, seed=train.seed) if data.shuffle else ds.repeat(None)
    elif not packed:
        ds = ds[: train.eval_batches * train.batch_size]  # validation reads a bounded number of rows
    if not packed:
        # Batch b of this shard = global rows [b*B + index*rows, b*B + (index+1)*rows).
        return ds.batch(rows, drop_remainder=whole)[index::count].to_iter_dataset(BATCH_READ)
    it_ds = grain.experimental.ConcatThenSplitIterDataset(
        ds.to_iter_dataset(), length_struct={"input_ids": train.seq_len}
    )
    if whole:
        it_ds = it_ds.map(lambda ex: {"input_ids": np.asarray(ex["input_ids"], np.int32)})
    else:  # the last packed row is zero-filled: leave the filler unscored
        it_ds = it_ds.map(lambda ex: {"input_ids": np.asarray(ex["input_ids"], np.int32),
                                      "loss_mask": (np.asarray(ex["input_ids_segment_ids"]) > 0).astype(np.int32)})
    return it_ds.batch(rows, drop_remainder=whole)


def fill_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """`batch` with a `loss_mask`, grown to `rows` rows by repeating its rows; the added rows are never scored.

    Example:
        >>> fill_rows({"input_ids": np.ones((3, 4), np.int32)}, 4)["loss_mask"].sum(-1)
        array([4, 4, 4, 0])
    """
    n = len(batch["input_ids"])
    if not 0 < n <= rows:
        raise ValueError(f"a batch of {n} rows cannot be filled to {rows} rows")
    take = np.arange(rows) % n
    out = {k: np.asarray(v)[take] for k, v in batch.items()}
    scored = out.get("loss_mask", np.ones_like(out["input_ids"]))
    out["loss_mask"] = (scored * (np.arange(rows) < n)[:, None]).astype(np.int32)
    return out


def unscored(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of a (filled) batch that scores nothing: it lets a data shard with fewer batches join an eval."""
    return {**batch, "loss_mask": np.zeros_like(batch["loss_mask"])}


def scored_tokens(batch: dict[str, np.ndarray]) -> int:
    """Tokens a batch is scored on: `loss_mask`, minus the prompt (`prompt_mask`) and padding (`attention_mask`)."""
    scored = np.asarray(batch.get("loss_mask", np.ones_like(batch["input_ids"]))).astype(bool)
    if "prompt_mask" in batch:
        scored &= ~np.asarray(batch["prompt_mask"]).astype(bool)
    if "attention_mask" in batch:
        scored &= np.asarray(batch["attention_mask"]).astype(bool)
    return int(scored.sum())


def val_batches(ds: grain.IterDataset, limit: int, rows: int) -> list[dict[str, np.ndarray]]:
    """Up to `limit` batches of a validation dataset, materialised once (the same batches every eval).

    Each batch carries a `loss_mask`; a short last batch (a split smaller than a batch, or its
    tail) is filled to `rows` rows with unscored repeats, so any non-empty split validates.
    """
    out = []
    for batch in ds:
        out.append(fill_rows(batch, rows))
        if len(out) >= limit:
            break
    return out


def restore_state(iterator: grain.DatasetIterator, state: dict[str, Any]) -> None:
    """Set `iterator` to a `get_state()` that went through JSON (a checkpoint), so it resumes at the next batch.

    JSON turns grain's packing slices `(start, stop)` into lists, and grain then mistakes "no
    remainder" `[-1, -1]` for a remainder and skips a document on resume; the tuples are restored first.
    """
    iterator.set_state(restore_state_tree(state))


def restore_state_tree(state: Any) -> Any:
    """`state` with every `remainder_slices` entry a tuple again (see `restore_state`).

    Example:
        >>> restore_state_tree({"parent_state": {"next_index": 3}, "remainder_slices": {"input_ids": [-1, -1]}})
        {'parent_state': {'next_index': 3}, 'remainder_slices': {'input_ids': (-1, -1)}}
    """
    if not isinstance(state, dict):
        return state
    return {k: ({f: tuple(s) for f, s in v.items()} if k == "remainder_slices" else restore_state_tree(v))
            for k, v in state.items()}
