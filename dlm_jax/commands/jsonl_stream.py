"""Batch output that survives a stop: JSONL written whole batch by whole batch, resumed by row index, SIGTERM-safe."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from dlm_jax.data.jsonl import parse_line


class Stopped(BaseException):
    """Raised in the main thread when SIGTERM arrives during `stop_on_sigterm` (a BaseException, like
    KeyboardInterrupt, so library code that catches Exception does not swallow it)."""


class _Guard:
    """Defers a SIGTERM that arrives while a batch is being written until the batch is complete."""

    def __init__(self) -> None:
        self.writing = False
        self.pending = False

    def handler(self, signum: int, frame: Any) -> None:
        if self.writing:
            self.pending = True
            return
        raise Stopped

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.pending:
            raise Stopped


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[_Guard]:
    """Turn SIGTERM into `Stopped` (a clean stop point), except inside `guard.atomic()` where it waits.

    Outside the main thread signals cannot be handled; the guard then does nothing.

    Example:
        >>> out = JsonlWriter(pathlib.Path("out.jsonl"), "w")
        >>> with stop_on_sigterm() as guard:
        ...     for batch in [[{"id": 0}, {"id": 1}], [{"id": 2}]]:
        ...         with guard.atomic():  # a SIGTERM here stops the loop only after the batch is written
        ...             out.write_batch(batch)
        >>> out.close()
        >>> read_done(pathlib.Path("out.jsonl"))
        [{'id': 0}, {'id': 1}, {'id': 2}]
    """
    guard = _Guard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = signal.signal(signal.SIGTERM, guard.handler)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous)


def read_done(path: pathlib.Path) -> list[dict[str, Any]]:
    """The complete rows of an output JSONL; a half-written last line (no newline) is cut off the file."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    rows = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        try:
            rows.append(parse_line(line, path, number))
        except ValueError as e:
            raise ValueError(f"{e}; cannot --resume from it") from None
    return rows


def check_resume(path: pathlib.Path, done: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> None:
    """Row i of the output must come from input row i: every input field is copied unchanged to the output."""
    if len(done) > len(inputs):
        raise ValueError(
            f"--resume: {path} holds {len(done)} rows but the input has {len(inputs)}; "
            "it was written for another input (pass --overwrite to start again)"
        )
    for number, (row, record) in enumerate(zip(done, inputs, strict=False), start=1):
        differs = [key for key, value in record.items() if row.get(key) != value]
        if differs:
            raise ValueError(
                f"--resume: {path}:{number} does not match input row {number} (field {differs[0]!r} differs); "
                "it was written for another input (pass --overwrite to start again)"
            )


class JsonlWriter:
    """Appends rows to `path` one flushed batch at a time; the file is created (or truncated) at the first batch.

    mode "w" starts the file over, "a" continues it (resume).
    """

    def __init__(self, path: pathlib.Path, mode: str):
        self.path = path
        self.mode = mode
        self.count = 0
        self._file: TextIO | None = None

    def write_batch(self, rows: list[dict[str, Any]]) -> None:
        """Write `rows` as whole lines and flush them to the OS."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open(self.mode, encoding="utf-8")
        self._file.write("".join(json.dumps(row) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.count += len(rows)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
