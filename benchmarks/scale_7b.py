"""Dream-7B at full size on a CPU host: convert both ways, load, generate; wall time and peak RSS of each.

Writes a random Dream-7B-shaped bf16 HF checkpoint (28 layers, hidden 3584, MLP 18944, 28/4 heads,
vocab 152064, q/k/v bias, untied head; 4 safetensors shards, 15.2 GB) block by block, never holding
it in memory, then runs each step in its own child process and records that child's peak RSS
(next to an idle child that only imports dlm_jax and starts JAX, the runtime's own share):

    hf -> dlm_jax      dlm-jax convert --to dlm_jax
    dlm_jax -> hf      dlm-jax convert --to hf (spot-checked bit-exact against the source)
    from_pretrained    DiffusionLM.from_pretrained(hf folder / dlm_jax folder, dtype="bfloat16")
    generate           from_pretrained(hf folder) + diffusion_generate of 8 tokens (8 steps)

Needs ~46 GB of free disk in --workdir at full size (checkpoint, converted copy, exported copy; the
exported copy is deleted once checked) and ~20 GB of free memory. Everything written is removed at
the end unless --keep. `--scale 0.25` runs a ~0.3 GB version in a minute.

    .venv/bin/python benchmarks/scale_7b.py --workdir /tmp/scale7b --out benchmarks/results/scale_7b.json
    .venv/bin/python benchmarks/scale_7b.py --scale 0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np


@dataclasses.dataclass(frozen=True)
class Shape:
    layers: int = 28
    hidden: int = 3584
    intermediate: int = 18944
    heads: int = 28
    kv_heads: int = 4
    vocab: int = 152064

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def scaled(cls, scale: float) -> Shape:
        """Dream-7B with layers, heads (head_dim stays 128), MLP width and vocabulary scaled by `scale`."""
        base = cls()
        heads = max(1, round(base.heads * scale))
        return cls(
            layers=max(2, round(base.layers * scale)),
            hidden=heads * base.head_dim,
            intermediate=max(128, round(base.intermediate * scale / 128) * 128),
            heads=heads,
            kv_heads=max(1, round(base.kv_heads * scale)),
            vocab=max(1024, round(base.vocab * scale)),
        )

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every HF tensor, in file order."""
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        out = [("model.embed_tokens.weight", (self.vocab, d))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "input_layernorm.weight", (d,)),
                (p + "self_attn.q_proj.weight", (q, d)),
                (p + "self_attn.q_proj.bias", (q,)),
                (p + "self_attn.k_proj.weight", (kv, d)),
                (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.weight", (kv, d)),
                (p + "self_attn.v_proj.bias", (kv,)),
                (p + "self_attn.o_proj.weight", (d, q)),
                (p + "post_attention_layernorm.weight", (d,)),
                (p + "mlp.gate_proj.weight", (self.intermediate, d)),
                (p + "mlp.up_proj.weight", (self.intermediate, d)),
                (p + "mlp.down_proj.weight", (d, self.intermediate)),
            ]
        return out + [("model.norm.weight", (d,)), ("lm_head.weight", (self.vocab, d))]

    def config(self) -> dict:
        mask = 151666 if self.vocab == Shape().vocab else self.vocab - 1
        special = 151643 if self.vocab == Shape().vocab else self.vocab - 2
        return {
            "architectures": ["DreamModel"],
            "model_type": "Dream",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "intermediate_size": self.intermediate,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 1e6,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "mask_token_id": mask,
            "pad_token_id": special,
            "bos_token_id": special,
            "eos_token_id": special,
        }


_POOL = 1 << 23  # 8M random bf16 values (16 MB), reused at random offsets for every block


def _write_shard(path: pathlib.Path, tensors: list[tuple[str, tuple[int, ...]]], pool: np.ndarray, rng) -> None:
    """One safetensors file written block by block (norm weights are ones, the rest N(0, 0.02) values)."""
    header, offset = {}, 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    ones = np.ones(_POOL, ml_dtypes.bfloat16)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in tensors:
            left = math.prod(shape)
            while left:
                n = min(left, _POOL)
                if name.endswith("norm.weight"):
                    f.write(memoryview(ones[:n].view(np.uint8)))
                else:
                    start = int(rng.integers(_POOL))
                    f.write(memoryview(pool[start : start + n].view(np.uint8)))
                left -= n


def write_random_dream(folder: pathlib.Path, shape: Shape, shards: int = 4, seed: int = 0) -> int:
    """A random Dream-shaped bf16 HF folder in `shards` safetensors files; returns the weight bytes.

    Memory in use is a 32 MB pool of random values, whatever the size of the checkpoint.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(2 * _POOL, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    tensors = shape.tensors()
    total = sum(math.prod(s) * 2 for _, s in tensors)
    groups: list[list] = [[] for _ in range(shards)]
    done = 0
    for name, s in tensors:
        groups[min(shards - 1, done * shards // total)].append((name, s))
        done += math.prod(s) * 2
    weight_map = {}
    for k, group in enumerate(g for g in groups if g):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        _write_shard(folder / fname, group, pool, rng)
        weight_map.update({name: fname for name, _ in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=1))
    return total


def _step_load(src: str) -> dict:
    from dlm_jax import DiffusionLM

    t0 = time.perf_counter()
    model = DiffusionLM.from_pretrained(src, dtype="bfloat16")
    return {"load_s": time.perf_counter() - t0, "param_dtype": model.config.param_dtype}


def _step_generate(src: str) -> dict:
    from dlm_jax import DiffusionLM

    t0 = time.perf_counter()
    model = DiffusionLM.from_pretrained(src, dtype="bfloat16")
    t1 = time.perf_counter()
    prompt = np.arange(1, 9, dtype=np.int32)[None]
    out = model.diffusion_generate(prompt, max_new_tokens=8, steps=8, alg="entropy", top_k=None)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "generate_s": t2 - t1, "tokens": out.sequences[0, 8:].tolist()}


def _step_check(a: str, b: str) -> dict:
    """The exported folder holds the source's tensors bit for bit (first, middle and last ones checked)."""
    from dlm_jax.conversion.tensor_io import WeightStore

    src, out = WeightStore(pathlib.Path(a)), WeightStore(pathlib.Path(b))
    names = sorted(src.keys())
    if sorted(out.keys()) != names:
        raise SystemExit(f"exported tensor names differ: {sorted(set(names) ^ set(out.keys()))[:5]}")
    picked = sorted({names[0], names[len(names) // 2], names[-1], "model.embed_tokens.weight", "lm_head.weight"})
    for name in picked:
        x, y = src.get(name), out.get(name)
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x.view(np.uint16), y.view(np.uint16)):
            raise SystemExit(f"tensor {name} differs after the round trip")
    return {"checked": picked}


def run_step(argv: list[str]) -> None:
    """Child-process entry: run one step and print its JSON result on the last line."""
    step, *args = argv
    if step == "write":
        shape = Shape(**json.loads(args[1]))
        result = {"bytes": write_random_dream(pathlib.Path(args[0]), shape)}
    else:
        result = {"load": _step_load, "generate": _step_generate, "check": _step_check}[step](*args)
    print(json.dumps(result))


_WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
    "print(json.dumps({'rc': r.returncode, 'peak_rss': peak, 'out': r.stdout[-4000:], 'err': r.stderr[-4000:]}))\n"
)


def measure(cmd: list[str]) -> dict:
    """Run `cmd` as the only child of a fresh wrapper; its wall time, peak RSS and last stdout line (JSON)."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - t0
    if info["rc"] != 0:
        raise SystemExit(f"step failed: {' '.join(cmd)}\n{info['out']}\n{info['err']}")
    lines = [line for line in info["out"].strip().splitlines() if line.startswith("{")]
    return {
        "wall_s": round(wall, 1),
        "peak_rss_bytes": info["peak_rss"],
        "load_avg_1min": round((load + os.getloadavg()[0]) / 2, 2),
        **(json.loads(lines[-1]) if lines else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = Dream-7B; e.g. 0.25 for a quick run")
    ap.add_argument("--workdir", type=pathlib.Path, default=None, help="where checkpoints go (default: a temp dir)")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints written")
    ap.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        run_step(args.step)
        return
    shape = Shape() if args.scale == 1.0 else Shape.scaled(args.scale)
    work = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="scale7b-"))
    work.mkdir(parents=True, exist_ok=True)
    hf, native, back = work / "hf", work / "native", work / "hf_back"
    me = [sys.executable, str(pathlib.Path(__file__).resolve()), "--step"]
    dlm = str(pathlib.Path(sys.executable).with_name("dlm-jax"))
    rows: dict[str, dict] = {}
    try:
        rows["write checkpoint"] = measure([*me, "write", str(hf), json.dumps(dataclasses.asdict(shape))])
        size = rows["write checkpoint"]["bytes"]
        print(f"checkpoint: {size / 1e9:.2f} GB, {shape}", flush=True)
        idle = "import jax; from dlm_jax import DiffusionLM; jax.numpy.ones(1).block_until_ready()"
        steps = [
            ("idle (imports + JAX)", [sys.executable, "-c", idle]),
            ("convert hf -> dlm_jax", [dlm, "convert", "--src", str(hf), "--dst", str(native), "--to", "dlm_jax"]),
            ("convert dlm_jax -> hf", [dlm, "convert", "--src", str(native), "--dst", str(back), "--to", "hf"]),
            ("check round trip", [*me, "check", str(hf), str(back)]),
            ("from_pretrained hf", [*me, "load", str(hf)]),
            ("from_pretrained dlm_jax", [*me, "load", str(native)]),
            ("generate 8 tokens", [*me, "generate", str(hf)]),
        ]
        for name, cmd in steps:
            if name == "from_pretrained hf" and not args.keep:
                shutil.rmtree(back)
            rows[name] = measure(cmd)
            rows[name]["peak_over_checkpoint"] = round(rows[name]["peak_rss_bytes"] / size, 3)
            print(f"{name}: {rows[name]}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"shape": dataclasses.asdict(shape), "checkpoint_bytes": size, "cpus": os.cpu_count(), "steps": rows}
    print(f"\n{'step':<26}{'wall s':>9}{'peak RSS GB':>13}{'/ checkpoint':>14}{'load avg':>10}")
    for name, r in rows.items():
        print(
            f"{name:<26}{r['wall_s']:>9.1f}{r['peak_rss_bytes'] / 1e9:>13.2f}"
            f"{r['peak_rss_bytes'] / size:>14.2f}{r['load_avg_1min']:>10.2f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
