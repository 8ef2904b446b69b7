"""Helpers for tests that drive `dlm-jax` the way a user does and check how bad input is refused."""

from __future__ import annotations

import pathlib

from dlm_jax.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `dlm-jax ARGV` in-process; an uncaught exception (a traceback for the user) fails the test."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(
    argv: list[str], capsys, *, contains: str | list[str], absent: list[pathlib.Path] = ()
) -> str:
    """`dlm-jax ARGV` exits 2 with one `dlm-jax CMD: error: ...` line naming what is wrong, and leaves no output.

    `contains`: text(s) the message must include; `absent`: paths that must not exist afterwards.
    Returns the message for the battery's report.
    """
    rc, _, err = run_cli(argv, capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2, f"exit code {rc}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"dlm-jax {argv[0]}: error: "), lines[0]
    for text in [contains] if isinstance(contains, str) else contains:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    for path in absent:
        assert not pathlib.Path(path).exists(), f"{path} was left behind"
    return lines[0]
