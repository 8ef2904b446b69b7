"""The trainer on device meshes: same init and loss curve as one device, resume onto another mesh, data shards."""

import dataclasses
import json
import pathlib
import shutil
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import yaml

from dlm_jax.data import pipeline
from dlm_jax.data.config import DataConfig
from dlm_jax.training.config import TrainConfig, experiment_from_dict
from dlm_jax.training.trainer import Trainer, pick_data_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
N = 3  # steps per half
MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}
MESH_181 = {"data": 1, "fsdp": 8, "tensor": 1}


def _spec(out_dir, mesh, *, every=0, ckpt_dir=None, export=False):
    # 12 facts -> a 50-token vocabulary, so tensor=2 can split the embedding's vocab dim.
    return {
        "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
        "train": {"objective": "mdm", "batch_size": 8, "seq_len": 12, "max_steps": 2 * N, "lr": 1e-2,
                  "warmup_steps": 1, "log_every": 1, "eval_mc_samples": 2, "eval_batches": 1},
        "data": {"kind": "reverse_curse", "pack": False, "options": {"num_facts": 12}},
        "checkpoint": {"every": every, "async_save": False, "export": export,
                       "dir": str(ckpt_dir) if ckpt_dir else None},
        "logging": {"out_dir": str(out_dir), "progress": False},
        "mesh": mesh,
    }


def _exp(out_dir, mesh, **kw):
    return experiment_from_dict(_spec(out_dir, mesh, **kw))


def _curve(result):
    return {r["step"]: r["loss"] for r in result.history if "loss" in r}


def _train(trainer):
    try:
        return trainer.run()
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run on a single device (mesh 1x1x1 over the first of the 8 virtual devices)."""
    trainer = Trainer(_exp(tmp_path_factory.mktemp("ref"), {"fsdp": 1}), devices=jax.devices()[:1])
    assert dict(trainer.partitioner.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    init = jax.device_get(trainer.state.params)
    return init, _train(trainer)


def _close(a, b, rtol=2e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-6)


def _same_init(trainer, init):
    chex.assert_trees_all_equal(jax.device_get(trainer.state.params), init)


@pytest.mark.slow
def test_meshes_match_one_device_and_resume_onto_another_mesh(reference, tmp_path):
    init, ref = reference
    ref_curve = _curve(ref)
    assert sorted(ref_curve) == list(range(1, 2 * N + 1)) and len(set(ref_curve.values())) == 2 * N
    # (2, 2, 2): weights born sharded with exactly the one-device values, then the same loss curve.
    mixed = Trainer(_exp(tmp_path / "mixed", MESH_222, every=N))
    q = mixed.state.params["layers"]["attn"]["q"]["kernel"]
    assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.size == q.size // 4  # fsdp=2 x tensor=2
    _same_init(mixed, init)
    mixed_result = _train(mixed)
    mixed_curve = _curve(mixed_result)
    assert sorted(mixed_curve) == sorted(ref_curve)
    _close([mixed_curve[s] for s in sorted(ref_curve)], [ref_curve[s] for s in sorted(ref_curve)])
    _close(mixed_result.final_val, ref.final_val)
    # (1, 8, 1): the same initial weights, fsdp-sharded 8 ways.
    fresh = Trainer(_exp(tmp_path / "fresh", MESH_181))
    q = fresh.state.params["layers"]["attn"]["q"]["kernel"]
    assert q.addressable_shards[0].data.size == q.size // 8
    _same_init(fresh, init)
    fresh.close()
    # Drop the final checkpoint so a (1, 8, 1) run resumes the (2, 2, 2) checkpoint of step N (orbax reshards).
    ckpt_dir = tmp_path / "mixed" / "checkpoints"
    shutil.rmtree(ckpt_dir / str(2 * N))
    resumed = Trainer(_exp(tmp_path / "fsdp", MESH_181, ckpt_dir=ckpt_dir))
    assert int(resumed.state.step) == N and dict(resumed.partitioner.mesh.shape) == MESH_181
    rest = _train(resumed)
    rest_curve = _curve(rest)
    assert sorted(rest_curve) == list(range(N + 1, 2 * N + 1))
    _close([rest_curve[s] for s in rest_curve], [ref_curve[s] for s in rest_curve])
    _close(rest.final_val, ref.final_val)
    chex.assert_trees_all_close(jax.device_get(rest.state.params), jax.device_get(ref.state.params), rtol=1e-4,
                                atol=1e-6)


def test_batch_not_divisible_by_the_mesh_is_one_clear_error(tmp_path):
    exp = _exp(tmp_path, {})
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, batch_size=6))
    with pytest.raises(ValueError, match=r"train.batch_size=6 .* data-parallel size 8 .*fsdp=8"):
        Trainer(exp)
    with pytest.raises(ValueError, match=r"has 8 devices but 1 are available"):
        Trainer(_exp(tmp_path, MESH_181), devices=jax.devices()[:1])


def test_data_shards_are_the_rows_of_the_global_batch(tmp_path):
    data = DataConfig(kind="reverse_curse", pack=False, options={"num_facts": 12})
    train = TrainConfig(batch_size=8, seq_len=12, seed=3)
    recs = pipeline.load_records(data, "train")
    tok = pipeline.build_tokenizer(data, recs)
    whole = iter(pipeline.make_dataset(recs, data, train, tok))
    parts = [iter(pipeline.make_dataset(recs, data, train, tok, shard=(i, 4))) for i in range(4)]
    for _ in range(3):  # crosses an epoch boundary (12 records, 8 rows per batch)
        glued = np.concatenate([next(p)["input_ids"] for p in parts])
        np.testing.assert_array_equal(glued, next(whole)["input_ids"])
    states = [p.get_state() for p in parts]
    assert all(s == whole.get_state() for s in states)  # so a checkpoint resumes on any process count
    saved = {"shard_count": 4, "shards": {str(i): s for i, s in enumerate(states)}}
    assert pick_data_state(saved, (0, 2)) == states[0]
    packed = {"shard_count": 2, "shards": {"0": {"a": 1}, "1": {"a": 2}}}
    assert pick_data_state(packed, (1, 2)) == {"a": 2}
    with pytest.raises(ValueError, match="read as 2 data shards .* this run has 4"):
        pick_data_state(packed, (1, 4))
    with pytest.raises(ValueError, match="predates per-process data shards"):
        pick_data_state({"next_index": 3}, (0, 1))
    with pytest.raises(ValueError, match="train.batch_size=8 must be divisible by the 3 data shards"):
        pipeline.make_dataset(recs, data, train, tok, shard=(0, 3))


@pytest.mark.slow
def test_two_processes_run_dlm_jax_train_like_one_device(reference, tmp_path):
    """`dlm-jax train` in 2 processes x 4 CPU devices (launch/local.py): fsdp=8 over both, each reads half a batch."""
    _, ref = reference
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(_spec(tmp_path / "run", {}, every=N, export=True)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli = "import sys; from dlm_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, str(ROOT / "launch" / "local.py"), "--num-processes", "2", "--cpu-devices", "4",
           "--port", str(port), "--", sys.executable, "-c", cli, "train", "--config", str(config)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("done: step 6") == 1  # only process 0 reports
    assert "mesh data=1,fsdp=8,tensor=1 over 8 devices, 2 process(es)" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert [r["step"] for r in records] == list(range(1, 2 * N + 1))  # one writer, one line per step
    ref_curve = _curve(ref)
    _close([curve[s] for s in sorted(ref_curve)], [ref_curve[s] for s in sorted(ref_curve)])
    _close(records[-1]["val_elbo"], ref.final_val)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [str(N), str(2 * N)]
    from dlm_jax.api import DiffusionLM

    exported = DiffusionLM.from_pretrained(tmp_path / "run" / "model")
    chex.assert_trees_all_close(jax.device_get(exported.params), jax.device_get(ref.state.params), rtol=1e-4,
                                atol=1e-6)
