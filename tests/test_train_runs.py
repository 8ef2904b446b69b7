"""Runs that stop and start: resume line, finished reruns, no duplicate metrics, loss PNG, wandb without a key,
and one-line config errors that leave no run folder behind."""

import json
import pathlib

import jax
import pytest
from cli_checks import assert_one_line_error, run_cli

from dlm_jax.data import pipeline
from dlm_jax.data.config import DataConfig
from dlm_jax.training import metrics_log
from dlm_jax.training.config import TrainConfig
from dlm_jax.training.wandb_setup import has_wandb_key, wandb_mode

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_MDM = str(REPO / "configs" / "experiments" / "tiny_mdm.yaml")
TINY = ["model.hidden_size=16", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=32",
        "train.batch_size=8", "train.log_every=1", "train.eval_mc_samples=1", "checkpoint.async_save=false",
        "logging.progress=false"]


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """The runs here compile the same tiny programs: share them through a temporary persistent cache."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for key, value in zip(keys, (str(tmp_path_factory.mktemp("xla_cache")), 0.0, 0), strict=True):
        jax.config.update(key, value)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def _argv(run: pathlib.Path, *sets: str, config: str = TINY_MDM) -> list[str]:
    argv = ["train", "--config", config, "--out", str(run)]
    for s in TINY + list(sets):
        argv += ["--set", s]
    return argv


def _steps(run: pathlib.Path) -> list[int]:
    return [r["step"] for r in metrics_log.read_metrics(run / "metrics.jsonl")]


@pytest.mark.slow
def test_finished_rerun_says_so_and_a_longer_run_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, _ = run_cli(_argv(run, "train.max_steps=2"), capsys)
    assert rc == 0 and "done: step 2, loss " in out and "resumed" not in out
    assert _steps(run) == [1, 2]
    png = (run / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000  # a drawn curve, not an empty canvas
    before = (run / "metrics.jsonl").read_text()

    rc, out, _ = run_cli(_argv(run, "train.max_steps=2"), capsys)
    assert rc == 0
    assert out.strip() == (f"run in {run} already finished at step 2; nothing to do "
                           f"(raise train.max_steps to train on, or pick another --out)")
    assert (run / "metrics.jsonl").read_text() == before

    rc, out, _ = run_cli(_argv(run, "train.max_steps=4"), capsys)
    assert rc == 0 and f"resumed from step 2 ({run / 'checkpoints'})" in out and "done: step 4, loss " in out
    records = metrics_log.read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[:2] == [json.loads(line) for line in before.splitlines()]
    assert "val_elbo" in records[1] and "val_elbo" in records[3]  # each segment's final validation


def test_crash_after_the_last_checkpoint_leaves_no_duplicate_steps(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    write = metrics_log.MetricsLog.write

    def write_then_crash(self, record):
        write(self, record)
        if record["step"] == 3:
            raise RuntimeError("simulated crash after step 3")

    monkeypatch.setattr(metrics_log.MetricsLog, "write", write_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(_argv(run, "train.max_steps=4", "checkpoint.every=2"), capsys)
    assert _steps(run) == [1, 2, 3] and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"tokens_per_s": 12.5, "st')  # the crash also cut a line short
    monkeypatch.setattr(metrics_log.MetricsLog, "write", write)

    rc, out, _ = run_cli(_argv(run, "train.max_steps=4", "checkpoint.every=2"), capsys)
    assert rc == 0 and "resumed from step 2" in out
    assert _steps(run) == [1, 2, 3, 4]  # step 3 is logged once: the file was cut back to the checkpoint


def test_metrics_log_leaves_out_missing_values(tmp_path):
    log = metrics_log.MetricsLog(tmp_path, total_steps=2, tokens_per_step=8, progress=True)
    log.write({"step": 1, "loss": 2.5, "val_elbo": None})
    log.close()
    (record,) = metrics_log.read_metrics(tmp_path / "metrics.jsonl")
    assert record["loss"] == 2.5 and "val_elbo" not in record


@pytest.fixture
def no_wandb_key(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path / "netrc"


def test_wandb_key_check_reads_env_and_netrc(no_wandb_key, monkeypatch, capsys):
    assert not has_wandb_key()
    assert wandb_mode("online") == "offline" and wandb_mode() == "offline"  # online is wandb's default
    assert capsys.readouterr().err.count("wandb: no API key") == 2
    assert wandb_mode("disabled") == "disabled" and wandb_mode("offline") == "offline"
    no_wandb_key.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert has_wandb_key() and wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert not has_wandb_key()  # the entry is for another host
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode("online") == "online" and capsys.readouterr().err == ""


def test_wandb_project_without_a_key_logs_offline_with_a_note(tmp_path, capsys, no_wandb_key):
    run = tmp_path / "run"
    rc, out, err = run_cli(_argv(run, "train.max_steps=1") + ["--wandb-project", "dlm-jax-test"], capsys)
    assert rc == 0 and "done: step 1" in out
    notes = [line for line in err.splitlines() if "no API key" in line]
    assert notes == ["wandb: no API key (set WANDB_API_KEY or run `wandb login`); logging offline, "
                     "upload later with `wandb sync`"]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1


def test_config_errors_are_one_line_and_leave_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  family: smdm\n  hidden_size: 64\n train:\n  lr: 1\n")
    assert_one_line_error(["train", "--config", str(broken), "--out", str(run)], capsys,
                          contains=f"{broken}:4:2: invalid YAML: expected <block end>", absent=[run])
    assert_one_line_error(_argv(run, "train.max_steps=abc"), capsys,
                          contains="--set train.max_steps: expected int, got 'abc'", absent=[run])
    assert_one_line_error(_argv(run, "model.hidden_size=1.5"), capsys,
                          contains="--set model.hidden_size: expected int, got 1.5", absent=[run])
    assert_one_line_error(_argv(run, "train.learning_rate=1"), capsys,
                          contains="--set train.learning_rate: unknown key; known train keys: adam_eps,", absent=[run])
    assert_one_line_error(_argv(run, "train.max_step=3"), capsys,
                          contains="--set train.max_step: unknown key; did you mean train.max_steps?", absent=[run])
    assert_one_line_error(_argv(run, "checkpoint.every.n=3"), capsys,
                          contains="--set checkpoint.every.n: every is a value, not a section", absent=[run])
    typo = tmp_path / "typo.yaml"
    typo.write_text("model: smdm_6m\ntrain:\n  batchsize: 8\n")
    assert_one_line_error(["train", "--config", str(typo), "--out", str(run)], capsys,
                          contains=f"{typo}: unknown key train.batchsize; did you mean train.batch_size?",
                          absent=[run])
    sudoku = str(REPO / "configs" / "experiments" / "sudoku_sft.yaml")
    assert_one_line_error(_argv(run, "data.val_examples=0", "data.num_examples=8", config=sudoku), capsys,
                          contains="train.eval_every=500 needs validation data", absent=[run])


def test_validation_keeps_a_short_last_batch_and_reads_a_bounded_number():
    facts = DataConfig(kind="reverse_curse", pack=False, options={"num_facts": 24})
    train = TrainConfig(batch_size=32, seq_len=12, eval_batches=2)
    records = pipeline.load_records(facts, "val")
    ds = pipeline.make_dataset(records, facts, train, pipeline.build_tokenizer(facts, records), split="val")
    (batch,) = pipeline.val_batches(ds, train.eval_batches, 32)  # 24 facts: less than one batch of 32
    assert batch["input_ids"].shape == (32, 12)
    assert batch["loss_mask"][:24].all() and not batch["loss_mask"][24:].any()
    assert pipeline.scored_tokens(batch) == 24 * 12
    sudoku = DataConfig(kind="sudoku", val_examples=256)
    records = pipeline.load_records(sudoku, "val")
    ds = pipeline.make_dataset(records, sudoku, TrainConfig(batch_size=32, seq_len=40, eval_batches=2),
                               pipeline.build_tokenizer(sudoku, records), split="val")
    assert len(pipeline.val_batches(ds, train.eval_batches, 32)) == 2  # 8 batches in the split, 2 read
