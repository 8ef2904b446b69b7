"""Shared pieces of the launchers: the command after `--`, environment exports, shell quoting."""

from __future__ import annotations

import argparse
import shlex


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher args, program argv) split at the first `--`."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def require_command(parser: argparse.ArgumentParser, command: list[str]) -> None:
    if not command:
        parser.error("give the program to run after `--`, e.g. -- dlm-jax train --config tiny_mdm")


def exports(env: dict[str, str]) -> str:
    """`export A=1 B='x y'` (sorted, quoted) or an empty string."""
    if not env:
        return ""
    return "export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(env.items()))


def shell_join(parts: list[str]) -> str:
    return " && ".join(p for p in parts if p)


def quote(argv: list[str]) -> str:
    return shlex.join(argv)
