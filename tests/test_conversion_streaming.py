"""Conversion and loading stream: peak memory stays far below a second copy of the model.

A Dream-shaped bf16 checkpoint of 260 MB (8 layers, width 1024, MLP 4096) is written block by
block, then converted and loaded in fresh child processes whose peak RSS is measured against an
idle child that imported and opened the same things (the runtime's own ~250 MB is not the model).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from benchmarks.scale_7b import Shape, write_random_dream
from dlm_jax import DiffusionLM, checkpoint_io
from dlm_jax.checkpoint_io.zarr_params import CHUNK_BYTES
from dlm_jax.conversion import hf_reader
from dlm_jax.conversion.tensor_io import WeightStore
from tests.cli_checks import assert_one_line_error, run_cli
from tests.hf_models import build, save

SHAPE = Shape(layers=8, hidden=1024, intermediate=4096, heads=8, kv_heads=2, vocab=4096)
BUDGET = 1 << 20  # in-flight write budget: each stacked MLP leaf (67 MB) is far larger

_WRAPPER = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
)


def peak_rss(code: str) -> int:
    """Peak RSS (bytes) of a fresh `python -c code`, the only child of a wrapper process."""
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dream(tmp_path_factory) -> tuple[pathlib.Path, int]:
    folder = tmp_path_factory.mktemp("streaming") / "hf"
    return folder, write_random_dream(folder, SHAPE)


@pytest.mark.slow
def test_conversion_streams_both_ways_and_round_trips_bit_exact(dream):
    src, size = dream
    native, back = src.parent / "native", src.parent / "back"
    assert size > 250e6 and SHAPE.layers * SHAPE.hidden * SHAPE.intermediate * 2 > 50 * BUDGET
    idle = peak_rss(f"from dlm_jax.conversion.engine import open_model; open_model({str(src)!r}, None)")
    convert = "from dlm_jax.conversion.engine import convert; convert"
    to_native = peak_rss(f"{convert}({str(src)!r}, {str(native)!r}, 'dlm_jax', budget_bytes={BUDGET})")
    to_hf = peak_rss(f"{convert}({str(native)!r}, {str(back)!r}, 'hf')")
    print(f"peak above idle / checkpoint: to dlm_jax {(to_native - idle) / size:.2f}, back {(to_hf - idle) / size:.2f}")
    # Measured ~0.15-0.25x; a whole copy of the model would be 1.0x.
    assert to_native - idle < 0.35 * size, (to_native - idle) / size
    assert to_hf - idle < 0.35 * size, (to_hf - idle) / size

    a, b = WeightStore(src), WeightStore(back)
    assert sorted(a.keys()) == sorted(b.keys())
    for name in a.keys():
        x, y = a.get(name), b.get(name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x.view(np.uint16), y.view(np.uint16)), name
    meta = json.loads((native / "dlm_jax_config.json").read_text())
    assert meta["model_config"]["param_dtype"] == "bfloat16"


@pytest.mark.slow
def test_from_pretrained_holds_one_copy_in_the_requested_dtype(dream):
    src, size = dream
    native = src.parent / "native_load"
    run = f"from dlm_jax.conversion.engine import convert; convert({str(src)!r}, {str(native)!r}, 'dlm_jax')"
    subprocess.run([sys.executable, "-c", run], check=True)
    setup = "import jax; from dlm_jax import DiffusionLM; jax.numpy.ones(1).block_until_ready(); "
    idle = peak_rss(setup)
    for folder, dtype, params in ((src, "bfloat16", size), (native, "float32", 2 * size)):
        peak = peak_rss(setup + f"DiffusionLM.from_pretrained({str(folder)!r}, dtype={dtype!r})")
        print(f"from_pretrained {folder.name} {dtype}: peak above idle / parameters {(peak - idle) / params:.2f}")
        # One copy of the parameters plus a few read blocks; a second copy would be +1.0x.
        assert peak - idle < 1.1 * params + 4 * CHUNK_BYTES, (folder.name, dtype, (peak - idle) / params)


def _tiny_dream(tmp_path: pathlib.Path) -> pathlib.Path:
    return save(build("qwen2").to(dtype=torch.bfloat16), tmp_path / "hf")


def test_native_folder_is_an_orbax_tree_and_orbax_folders_load(tmp_path, capsys):
    src = _tiny_dream(tmp_path)
    rc, out, err = run_cli(["convert", "--src", str(src), "--dst", str(tmp_path / "native"), "--to", "dlm_jax"], capsys)
    assert rc == 0, err
    model = DiffusionLM.from_pretrained(tmp_path / "native", dtype=None)
    assert model.config.param_dtype == "bfloat16"
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model.params)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        restored = ckptr.restore((tmp_path / "native" / "params").absolute(), args=ocp.args.StandardRestore(abstract))
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(model.params), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))

    # A folder whose parameters Orbax saved itself (OCDBT, one chunk per leaf) loads and converts too.
    orbax_dir = tmp_path / "orbax"
    orbax_dir.mkdir()
    shutil.copy(tmp_path / "native" / checkpoint_io.CONFIG_NAME, orbax_dir)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        ckptr.save((orbax_dir / "params").absolute(), args=ocp.args.StandardSave(model.params))
    again = DiffusionLM.from_pretrained(orbax_dir, dtype="float32")
    for x, y in zip(jax.tree.leaves(again.params), jax.tree.leaves(model.params), strict=True):
        assert x.dtype == np.float32 and np.array_equal(np.asarray(x), np.asarray(y, np.float32))
    rc, _, err = run_cli(["convert", "--src", str(orbax_dir), "--dst", str(tmp_path / "back"), "--to", "hf"], capsys)
    assert rc == 0, err
    a, b = WeightStore(src), WeightStore(tmp_path / "back")
    for name in a.keys():
        assert np.array_equal(a.get(name).view(np.uint16), b.get(name).view(np.uint16)), name


def test_orbax_budget_covers_the_largest_leaf():
    # Dream-7B's embedding (1.09 GB) failed under a constant 1 GB budget; the budget follows the leaf.
    embedding = jax.ShapeDtypeStruct((152064, 3584), jax.numpy.bfloat16)
    assert checkpoint_io.orbax_concurrent_gb({"embed": embedding, "norm": np.ones(3)}) == 2
    assert checkpoint_io.orbax_concurrent_gb({"small": np.ones(3)}) == 1


def test_a_failure_while_writing_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    src = _tiny_dream(tmp_path)
    calls = []
    fill = hf_reader._HfLeafReader.fill

    def failing_fill(self, out, start, stop):
        calls.append(start)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        fill(self, out, start, stop)

    monkeypatch.setattr(hf_reader._HfLeafReader, "fill", failing_fill)
    dst = tmp_path / "new" / "native"
    assert_one_line_error(
        ["convert", "--src", str(src), "--dst", str(dst), "--to", "dlm_jax"],
        capsys,
        contains=[f"writing {dst} failed", "No space left on device"],
        absent=[tmp_path / "new"],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_sharded_loading_reads_only_each_shard_rows(tmp_path):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from dlm_jax.checkpoint_io.leaves import materialize
    from dlm_jax.conversion.engine import open_model

    src = _tiny_dream(tmp_path)
    source = open_model(src, "float32")
    reads: list[tuple[tuple[str, ...], int, int]] = []

    def recorded(leaf):
        def fill(out, start, stop):
            reads.append((leaf.path, start, stop))
            leaf.fill(out, start, stop)

        return dataclasses.replace(leaf, fill=fill)

    leaves = {path: recorded(leaf) for path, leaf in source.leaves.items()}
    mesh = Mesh(np.array(jax.devices()[:2]), ("layers",))  # the 2 layers of the tiny model, one per device
    shardings = {
        path: NamedSharding(mesh, PartitionSpec("layers") if path[0] == "layers" else PartitionSpec())
        for path in leaves
    }
    sharded = materialize(leaves, shardings)
    plain = materialize(source.leaves)
    for path in leaves:
        node_s, node_p = sharded, plain
        for key in path:
            node_s, node_p = node_s[key], node_p[key]
        assert node_s.sharding == shardings[path]
        np.testing.assert_array_equal(np.asarray(node_s), np.asarray(node_p))
        if path[0] == "layers":  # each device's callback read its own layer, nothing more
            assert sorted((a, b) for p, a, b in reads if p == path) == [(0, 1), (1, 2)], path
