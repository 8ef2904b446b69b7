"""`dlm-jax plan`: exact per-device param/optimiser bytes and FLOPs for a tiny model; clear errors on bad input."""

import json
import subprocess
import sys

import pytest
import yaml

TINY = {
    "family": "smdm",
    "vocab_size": 128,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 128,
    "mask_token_id": 127,
    "max_position_embeddings": 64,
}


def plan(*argv):
    return subprocess.run(
        [sys.executable, "-m", "dlm_jax.cli", "plan", *argv], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


@pytest.mark.slow
def test_plan_json_numbers(tiny_yaml):
    out = plan("--model", tiny_yaml, "--seq-len", "32", "--batch", "8", "--mesh", "fsdp=4,tensor=2", "--json")
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    d, v, f, layers, s = 64, 128, 128, 2, 32
    # Matrices carry one fsdp-sharded dim (embed) and one tensor-sharded dim: 1/8 each per device.
    matrices = v * d * 2 + layers * (4 * d * d + 3 * d * f)
    norms = layers * 2 * d + d  # scales shard only over fsdp
    assert p["model_params"] == matrices + norms
    assert p["per_device_bytes"]["params"] == 4 * (matrices // 8 + norms // 4)
    # AdamW mu + nu mirror the params (float32) plus replicated int32 counters.
    extra = p["per_device_bytes"]["opt_state"] - 2 * p["per_device_bytes"]["params"]
    assert 0 <= extra <= 32
    assert p["per_device_bytes"]["batch"] == 8 * 32 * 4 // 4  # rows split over data*fsdp, copied over tensor
    parts = ("params", "opt_state", "batch", "temporaries")
    assert p["per_device_bytes"]["total"] == sum(p["per_device_bytes"][k] for k in parts)
    assert p["per_device_bytes"]["temporaries"] > 0
    assert p["devices"] == 8 and p["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert p["remat"] is True and p["remat_policy"] == "full"
    flops_token = 6 * (v * d + layers * (4 * d * d + 3 * d * f)) + 12 * layers * s * d
    assert p["flops_per_token"] == flops_token
    assert p["flops_per_step"] == flops_token * 8 * 32
    h100 = p["accelerators"]["h100-sxm"]
    assert h100["tokens_per_s"] == pytest.approx(0.4 * 989e12 * 8 / flops_token)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mesh", "fsdp=4,tensor=1", "--devices", "8"], "has 4 devices but 8 are available"),
        (["--mesh", "fsdp=8", "--rule", "heads=model"], "names mesh axis 'model'"),
        (["--mesh", "fsdp=-1"], "give --devices N"),
        (["--mesh", "pipeline=2"], "expected AXIS=SIZE pairs"),
        (["--mesh", "fsdp=8", "--rule", "heads"], "expected LOGICAL=AXES"),
    ],
)
def test_plan_bad_input(tiny_yaml, argv, message, capsys):
    from dlm_jax.cli import main

    assert main(["plan", "--model", tiny_yaml, "--seq-len", "32", "--batch", "24", *argv]) == 2
    assert message in capsys.readouterr().err


def test_plan_indivisible_dimension_fails_before_compiling():
    from dlm_jax.models.config import ModelConfig
    from dlm_jax.parallel import MeshConfig
    from dlm_jax.training.plan import plan_train_step

    cfg = ModelConfig(**{**TINY, "hidden_size": 36, "num_heads": 3})
    with pytest.raises(
        ValueError, match=r"param embed/embedding \(128, 36\): dimension 1 \(logical 'embed'\) of size 36"
    ):
        plan_train_step(cfg, seq_len=32, batch=8, mesh_config=MeshConfig(fsdp=8))
    with pytest.raises(ValueError, match=r"batch\[input_ids\] \(12, 32\): dimension 0 \(logical 'batch'\) of size 12"):
        plan_train_step(ModelConfig(**TINY), seq_len=32, batch=12, mesh_config=MeshConfig(fsdp=8))
