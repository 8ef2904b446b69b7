"""The README is tested: every shell command in README.md is read out of it and run as a user would.

Commands come from the ```bash blocks (the Quickstart's included) and from inline `dlm-jax ...` /
`python ...` spans with options in the prose. Each must match one row of ROWS, which says how it
runs in a fresh working folder: verbatim, with size/step overrides appended (`--set train.max_steps=2`,
`--limit 2`, launchers' `--dry-run`), against tiny stand-ins built under the names the README uses
(readme_standins.py), or not at all, with the reason. A README command without a row, or a row
that matches no command, fails the test; a command that changes in the README changes what runs.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import re
import resource
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

import pytest
import readme_standins as standins

from dlm_jax.cli import main

REPO = pathlib.Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`((?:dlm-jax|python) [^`\n]*--[^`\n]*)`")
TRAIN_SHORT = ("--set", "train.max_steps=1")


def normalized(line: str) -> str:
    """One command line as shell words (comments dropped), quoted as needed; a pipe stays a bare `|`."""
    return " ".join(w if w == "|" else shlex.quote(w) for w in shlex.split(line, comments=True))


def readme_commands(text: str) -> list[str]:
    """Shell commands of README.md in document order: bash blocks (comments dropped, `\\` joined) and inline spans."""
    found: list[tuple[int, str]] = []
    for block in FENCE.finditer(text):
        if block.group(1) != "bash":
            continue
        for line in block.group(2).replace("\\\n", " ").splitlines():
            if normalized(line):
                found.append((block.start(), normalized(line)))
    prose = FENCE.sub(lambda m: " " * len(m.group(0)), text)
    found += [(m.start(), normalized(m.group(1))) for m in INLINE.finditer(prose)]
    return [cmd for _, cmd in sorted(found, key=lambda item: item[0])]


@dataclasses.dataclass(frozen=True)
class Row:
    """How the README commands matching `pattern` (a regex, full match) are run, or why they are not."""

    pattern: str
    group: str = ""  # the test that runs it (commands of one group share a working folder)
    extra: tuple[str, ...] = ()  # appended size/step overrides
    standins: tuple[str, ...] = ()  # names in the working folder built before the command runs
    stdin: str | None = None  # piped input for commands that read stdin
    makes: tuple[str, ...] = ()  # paths the command must leave behind
    expect: str | None = None  # a regex its output must contain
    skip: str | None = None  # the reason a command is not run

    @property
    def how(self) -> str:
        if self.skip:
            return "not run: " + self.skip
        return " + ".join(filter(None, ("verbatim" if not self.extra else "overrides " + " ".join(self.extra),
                                        "stand-ins " + ", ".join(self.standins) if self.standins else "")))


# Groups run as separate tests (in parallel under xdist), each in its own folder and in README order, so a
# group holds every command whose output a later command of the group reads.
DREAM, LLAMA, TINY, ADAPT, SCALE = "dream", "llama", "tiny", "adapt", "scale"
ROWS = [
    Row(r"make demo", skip="about 3 minutes (1500 steps x 2 models, then sampling every fact); its parts run "
        "here: train tiny_mdm and tiny_ar, generate and eval reverse_curse on the trained model"),
    Row(r"make test", skip="the test suite itself"),
    Row(r"pip install .*", skip="installs into the current environment; tests/test_install_wheel.py builds the "
        "wheel, installs it into a fresh venv and runs plan and train from outside the checkout"),
    Row(r"dlm-jax convert --src Dream-v0-Instruct-7B .*", DREAM, standins=("Dream-v0-Instruct-7B",),
        makes=("dream7b_jax",)),
    Row(r"dlm-jax convert --src dream7b_jax --dst dream7b_hf .*", DREAM, makes=("dream7b_hf/config.json",)),
    Row(r"dlm-jax generate --model Dream-v0-Instruct-7B .*", DREAM, standins=("Dream-v0-Instruct-7B",)),
    Row(r"dlm-jax generate --model tests/data/parity/dream/model .*", DREAM, standins=("tests",)),
    Row(r"dlm-jax chat --model Dream-v0-Instruct-7B .*", DREAM, standins=("Dream-v0-Instruct-7B",),
        stdin="hello\n", expect=r"assistant> "),
    Row(r"printf .* \| dlm-jax chat --model Dream-v0-Instruct-7B .*", DREAM, standins=("Dream-v0-Instruct-7B",),
        expect=r"(?s)assistant> .*assistant> "),  # one reply per piped line
    Row(r"dlm-jax eval --model dream7b_jax --tasks countdown3.*", DREAM, extra=("--limit", "2"),
        makes=("results/dream_planning.json",)),
    Row(r"dlm-jax eval --model Dream-v0-Base-7B --tasks gsm8k .*", DREAM, extra=("--limit", "2"),
        standins=("Dream-v0-Base-7B", "gsm8k_test.jsonl"), makes=("results/gsm8k.json",)),
    Row(r"dlm-jax convert --src my-llama .*", LLAMA, standins=("my-llama",), makes=("smdm_jax",)),
    Row(r"dlm-jax convert --src (LLaDA-8B-Instruct|llada8b_jax|mdm-1028M-\S+|out/iter-\S+) .*",
        skip="LLaDA/SMDM weights cannot be downloaded here; tests/test_conversion_seed_formats.py runs `convert` "
        "both ways on tiny checkpoints in exactly those layouts"),
    Row(r"dlm-jax generate --model llada_dir .*", LLAMA, standins=("llada_dir", "prompts.jsonl"),
        makes=("out.jsonl",)),
    Row(r"dlm-jax eval --model smdm_jax --tasks perplexity .*", LLAMA, extra=("--limit", "2", "--mc-num", "32"),
        standins=("val.jsonl",), makes=("results/ppl.json",)),
    Row(r"dlm-jax plan --model \w+ .*", LLAMA, extra=("--seq-len", "64"), expect=r"per device \(GiB\)"),
    Row(r"dlm-jax train --config configs/experiments/tiny_mdm\.yaml", TINY, extra=TRAIN_SHORT,
        makes=("runs/tiny_mdm/model",)),
    Row(r"dlm-jax generate --model runs/tiny_mdm/model .*", TINY),
    Row(r"python -m dlm_jax\.evaluation\.harness .* --include_path my_tasks .*", TINY, extra=("--limit", "2"),
        standins=("my_tasks",), makes=("results",)),
    Row(r"dlm-jax eval --model runs/tiny_mdm/model --tasks reverse_curse.*", TINY, extra=("--limit", "2"),
        expect="forward_acc"),
    Row(r"dlm-jax train --config configs/experiments/tiny_ar\.yaml .*", TINY, extra=TRAIN_SHORT,
        makes=("runs/ar/model",)),
    Row(r"dlm-jax train --config configs/experiments/sudoku_sft\.yaml", TINY, extra=TRAIN_SHORT,
        makes=("runs/sudoku_sft/model",)),
    Row(r"dlm-jax train --config configs/experiments/dream_sft\.yaml", skip="trained by "
        "tests/test_objectives_end_to_end.py: this config on a tiny Dream with a chat template (sizes and steps "
        "overridden), checked for CART weights, a falling loss and an exported model that generates"),
    Row(r"dlm-jax convert --src gpt2 .*", ADAPT, standins=("gpt2",), makes=("gpt2_jax",)),
    Row(r"dlm-jax train --config configs/experiments/diffugpt_adapt\.yaml", skip="trained by "
        "tests/test_objectives_end_to_end.py from tiny GPT-2 and LLaMA folders (sizes and steps overridden), checked "
        "for the causal-to-bidirectional anneal, a falling loss and an exported model that generates"),
    # --flops 1 gives max_steps = max(1, C / 6NBL) = 1; the model shrinks to keep the batch of 256 cheap.
    Row(r"dlm-jax train --config configs/experiments/smdm_scaling\.yaml .*", ADAPT,
        extra=("--flops", "1", "--set", "train.seq_len=8", "--set", "model.hidden_size=32",
               "--set", "model.num_layers=1", "--set", "model.num_heads=2", "--set", "model.num_kv_heads=2",
               "--set", "model.intermediate_size=64"),
        standins=("data/train.jsonl", "tokenizers/llama2"), makes=("runs/smdm_scaling/model",)),
    # One budget of 1 FLOP: each of the 2 sizes x 2 objectives trains 1 step (no power law with one budget).
    Row(r"dlm-jax sweep --out runs/sweep", SCALE, extra=("--flops", "1", "--batch-size", "8", "--seq-len", "16"),
        makes=("runs/sweep/sweep.json", "runs/sweep/sweep.png")),
    Row(r"python -m dlm_jax\.evaluation\.harness .* --tasks (hellaswag|piqa|lambada_openai).*",
        skip="lm-eval's hellaswag/piqa/arc/gsm8k/lambada/wikitext download their data sets from the HF hub; "
        "the --include_path command runs the same backend offline"),
    Row(r"python launch/(tpu_vm|slurm|local)\.py .*", SCALE, extra=("--dry-run",), standins=("launch",),
        expect=r"dlm-jax train --config configs/experiments/\w+\.yaml"),
]
GROUPS = sorted({row.group for row in ROWS if not row.skip})

STANDINS: dict[str, Callable[[pathlib.Path], object]] = {
    "Dream-v0-Instruct-7B": lambda p: standins.dream(p, instruct=True),
    "Dream-v0-Base-7B": lambda p: standins.dream(p, instruct=False),
    "my-llama": lambda p: standins.llama(p, vocab_size=32001, mask_token_id=None),  # SMDM's vocab: 32000 + mask
    "llada_dir": lambda p: standins.llama(p, vocab_size=256, mask_token_id=255),
    "gpt2": standins.gpt2,
    "tokenizers/llama2": standins.llama_tokenizer,
    "prompts.jsonl": standins.prompts,
    "data/train.jsonl": standins.pretraining_data,
    "gsm8k_test.jsonl": lambda p: standins.gsm8k(p, 8),
    "val.jsonl": lambda p: standins.text_corpus(p, 4, 3),
    "my_tasks": standins.lm_eval_task,
    "tests": lambda p: p.symlink_to(REPO / "tests"),
    "launch": lambda p: p.symlink_to(REPO / "launch"),
}


def _cpu_seconds() -> float:
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def row_for(command: str) -> Row:
    rows = [row for row in ROWS if re.fullmatch(row.pattern, command)]
    assert len(rows) == 1, f"README command {command!r} matches {len(rows)} rows of ROWS (need exactly one)"
    return rows[0]


def with_overrides(words: list[str], row: Row) -> list[str]:
    """Append the row's overrides; a launcher's `--dry-run` goes before the `--` that starts its program."""
    if "--" in words and row.extra == ("--dry-run",):
        cut = words.index("--")
        return words[:cut] + list(row.extra) + words[cut:]
    return words + list(row.extra)


def run_command(command: str, row: Row, cwd: pathlib.Path, capfd, monkeypatch) -> tuple[int, str]:
    """Run one README command in `cwd`: `dlm-jax` in-process, `python ...` in a subprocess; (exit code, output)."""
    stdin, words = row.stdin, shlex.split(command)
    if "|" in words:  # `printf ... | dlm-jax chat ...`: the producer runs in a shell, its output is the input
        cut = words.index("|")
        producer = subprocess.run(shlex.join(words[:cut]), shell=True, cwd=cwd, capture_output=True, text=True)
        stdin, words = producer.stdout, words[cut + 1:]
    words = with_overrides(words, row)
    if words[0] == "python":
        out = subprocess.run([sys.executable, *words[1:]], cwd=cwd, input=stdin, capture_output=True, text=True,
                             timeout=600)
        return out.returncode, out.stdout + out.stderr
    assert words[0] == "dlm-jax", words
    capfd.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
    try:
        rc = main(words[1:])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    except Exception:  # a traceback a user would see
        rc = 1
        print(traceback.format_exc(), file=sys.stderr)
    captured = capfd.readouterr()
    return rc, captured.out + captured.err


def test_readme_command_table_covers_every_command():
    commands = readme_commands((REPO / "README.md").read_text())
    assert len(commands) >= 30
    used = {row.pattern for row in map(row_for, commands)}
    stale = [row.pattern for row in ROWS if row.pattern not in used]
    assert not stale, f"rows of ROWS that match no README command: {stale}"
    assert all(bool(row.group) != bool(row.skip) for row in ROWS), "each row needs a group or a reason to skip"


def test_commands_are_read_from_bash_blocks_and_inline_spans():
    text = ("Run `dlm-jax sweep --out x` or `dlm-jax plan`.\n```bash\n# comment\ndlm-jax train --config a.yaml \\\n"
            "    --set b=1   # note\nprintf 'a b\\n' | dlm-jax chat --model m\n```\n```python\nx = 1\n```\n")
    assert readme_commands(text) == ["dlm-jax sweep --out x", "dlm-jax train --config a.yaml --set b=1",
                                     "printf 'a b\\n' | dlm-jax chat --model m"]
    with pytest.raises(AssertionError, match="matches 0 rows"):
        row_for("dlm-jax frobnicate --model m")


@pytest.mark.slow
@pytest.mark.parametrize("group", GROUPS)
def test_readme_commands_run(group, tmp_path, monkeypatch, capfd):
    """The group's README commands, in README order, in a fresh folder; every failure is listed, one line each."""
    monkeypatch.chdir(tmp_path)
    built: set[str] = set()
    failures, timings = [], []
    for command in readme_commands((REPO / "README.md").read_text()):
        row = row_for(command)
        if row.group != group:
            continue
        for name in row.standins:
            if name not in built:
                (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
                STANDINS[name](tmp_path / name)
                built.add(name)
        start, cpu = time.perf_counter(), _cpu_seconds()
        rc, output = run_command(command, row, tmp_path, capfd, monkeypatch)
        timings.append((time.perf_counter() - start, _cpu_seconds() - cpu, command))
        missing = [p for p in row.makes if not (tmp_path / p).exists()]
        if row.expect and not re.search(row.expect, output):
            missing.append(f"output matching {row.expect!r}")
        if rc != 0 or missing:
            tail = "\n    ".join(output.strip().splitlines()[-6:])
            failures.append(f"{command}\n  [{row.how}] exit {rc}, missing {missing}:\n    {tail}")
    assert timings, f"no README command in group {group!r}"
    report = "\n".join(f"{t:6.1f}s {cpu:6.1f}s  {c[:100]}" for t, cpu, c in timings)
    print(f"README commands (wall, CPU):\n{report}")
    assert not failures, f"{len(failures)} README command(s) failed:\n\n" + "\n\n".join(failures)


def test_readme_names_only_shipped_configs():
    """Every configs/... path in the README exists, so the commands above cannot name a stale config."""
    text = (REPO / "README.md").read_text()
    for path in set(re.findall(r"configs/(?:experiments|models|meshes)/\w+\.yaml", text)):
        assert (REPO / path).is_file(), path
