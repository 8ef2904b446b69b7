"""The seed projects' own checkpoint formats: LLaDA's HF folders and SMDM's lit-gpt files.

Tiny checkpoints are built in exactly those layouts and their logits after import are matched against
reference forwards written from the projects' modeling code (LLaDA's `modeling_llada.py`:
`LLaDALlamaBlock`, `RMSLayerNorm`, `RotaryEmbedding`; SMDM's `lit_gpt/diffmodel.py`: `TransEncoder`,
`SelfAttention` with qkv fused per query group, flash-attn's non-interleaved rotary, xformers' SwiGLU).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dlm_jax import DiffusionLM
from dlm_jax.conversion.engine import open_model
from dlm_jax.conversion.tensor_io import WeightStore
from tests.cli_checks import assert_one_line_error, run_cli

LLADA = dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, vocab_size=64, embedding_size=64,
             rope_theta=500000.0, rms_norm_eps=1e-5, max_sequence_length=64, mask_token_id=63, eos_token_id=62,
             pad_token_id=62, weight_tying=False, model_type="llada", architectures=["LLaDAModelLM"],
             block_type="llama", layer_norm_type="rms", activation_type="silu", rope=True, include_bias=False,
             include_qkv_bias=False, alibi=False, input_emb_norm=False, scale_logits=False, block_group_size=1,
             attention_layer_norm=False, layer_norm_with_affine=True, bias_for_layer_norm=False, mlp_ratio=4,
             multi_query_attention=None, flash_attention=False, use_cache=False, init_device="meta",
             auto_map={"AutoModel": "modeling_llada.LLaDAModelLM"}, torch_dtype="float32")
# SMDM's Config for a tiny Diff_LLaMA: vocab 60 padded to 64 (padding_multiple 64), wte 64 + 1 rows, mask id 60.
SMDM = dict(n_layer=2, n_head=4, n_query_groups=2, n_embd=32, intermediate_size=48, vocab_size=60, padded=64)
ATOL = 3e-5  # our float32 logits (magnitude ~2) against the float64 references
SMDM_YAML = """family: smdm
vocab_size: 61
hidden_size: 32
num_layers: 2
num_heads: 4
num_kv_heads: 2
intermediate_size: 48
norm_eps: 1.0e-5
rope_theta: 10000.0
max_position_embeddings: 64
logit_shift: false
mask_token_id: 60
"""


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * 0.3


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on [B, nh, T, hs], halves rotated (LLaDA's rotate_half; flash-attn's interleaved=False for SMDM)."""
    hs, t = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=x.dtype) / hs))
    freqs = torch.outer(torch.arange(t, dtype=x.dtype), inv_freq)
    pos = torch.cat((freqs, freqs), dim=-1)
    x1, x2 = x.view(*x.shape[:-1], 2, hs // 2).unbind(dim=-2)
    return x * pos.cos() + torch.cat((-x2, x1), dim=-1) * pos.sin()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional attention on [B, nh, T, hs] (k, v repeated per query group); [B, T, nh * hs]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
    return y.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


# ---- LLaDA: the HF folder of LLaDAModelLM -------------------------------------------------------


def effective_n_kv_heads(cfg: dict) -> int:
    """configuration_llada's `effective_n_kv_heads`: n_kv_heads, else 1 for multi-query attention, else n_heads."""
    if cfg["n_kv_heads"] is not None:
        return cfg["n_kv_heads"]
    return 1 if cfg["multi_query_attention"] else cfg["n_heads"]


def llada_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, hd, f = cfg["d_model"], cfg["d_model"] // cfg["n_heads"], cfg["mlp_hidden_size"]
    kv = effective_n_kv_heads(cfg)
    t = "model.transformer."
    sd = {t + "wte.weight": _rand(g, cfg["embedding_size"], d), t + "ln_f.weight": 1 + _rand(g, d)}
    for i in range(cfg["n_layers"]):
        p = f"{t}blocks.{i}."
        sd.update({p + "attn_norm.weight": 1 + _rand(g, d), p + "ff_norm.weight": 1 + _rand(g, d),
                   p + "q_proj.weight": _rand(g, d, d), p + "k_proj.weight": _rand(g, kv * hd, d),
                   p + "v_proj.weight": _rand(g, kv * hd, d), p + "attn_out.weight": _rand(g, d, d),
                   p + "ff_proj.weight": _rand(g, f, d), p + "up_proj.weight": _rand(g, f, d),
                   p + "ff_out.weight": _rand(g, d, f)})
    if not cfg["weight_tying"]:
        sd[t + "ff_out.weight"] = _rand(g, cfg["embedding_size"], d)
    return sd


def llada_forward(sd: dict[str, torch.Tensor], cfg: dict, ids: np.ndarray) -> np.ndarray:
    """LLaDAModel.forward with LLaDALlamaBlock (no attention mask: LLaDA's attention ignores it), in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    t, eps, theta = "model.transformer.", cfg["rms_norm_eps"], cfg["rope_theta"]
    nh, kv = cfg["n_heads"], effective_n_kv_heads(cfg)
    x = sd[t + "wte.weight"][torch.as_tensor(ids)]
    b, n, d = x.shape
    for i in range(cfg["n_layers"]):
        p = f"{t}blocks.{i}."
        h = _rms(x, sd[p + "attn_norm.weight"], eps)
        q = (h @ sd[p + "q_proj.weight"].T).view(b, n, nh, -1).transpose(1, 2)
        k = (h @ sd[p + "k_proj.weight"].T).view(b, n, kv, -1).transpose(1, 2)
        v = (h @ sd[p + "v_proj.weight"].T).view(b, n, kv, -1).transpose(1, 2)
        x = x + _attend(_rotate(q, theta), _rotate(k, theta), v) @ sd[p + "attn_out.weight"].T
        h = _rms(x, sd[p + "ff_norm.weight"], eps)
        x = x + (F.silu(h @ sd[p + "ff_proj.weight"].T) * (h @ sd[p + "up_proj.weight"].T)) @ sd[p + "ff_out.weight"].T
    x = _rms(x, sd[t + "ln_f.weight"], eps)
    head = sd[t + "wte.weight"] if cfg["weight_tying"] else sd[t + "ff_out.weight"]
    return (x @ head.T).numpy()


def llada_folder(folder: pathlib.Path, cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True)
    sd = llada_state(cfg, seed)
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_llada.py").write_text("# LLaDA's remote code travels with the folder\n")
    return sd


# ---- SMDM: a lit-gpt TransEncoder state dict -----------------------------------------------------


MLP_NAMES = {"swiglu": ("swiglu.w1", "swiglu.w2", "swiglu.w3"), "fc": ("fc_1", "fc_2", "proj")}  # gate, up, down


def smdm_shapes(c: dict, mlp: str = "swiglu") -> dict[str, tuple[int, ...]]:
    """TransEncoder's state dict shapes: wte padded_vocab_size + 1 rows, lm_head padded_vocab_size."""
    d, hs, f = c["n_embd"], c["n_embd"] // c["n_head"], c["intermediate_size"]
    names = MLP_NAMES[mlp]
    shapes = {"transformer.wte.weight": (c["padded"] + 1, d), "transformer.ln_f.weight": (d,),
              "lm_head.weight": (c["padded"], d)}
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        shapes.update({p + "norm_1.weight": (d,), p + "norm_2.weight": (d,),
                       p + "attn.attn.weight": ((c["n_head"] + 2 * c["n_query_groups"]) * hs, d),
                       p + "attn.proj.weight": (d, d), f"{p}mlp.{names[0]}.weight": (f, d),
                       f"{p}mlp.{names[1]}.weight": (f, d), f"{p}mlp.{names[2]}.weight": (d, f)})
    return shapes


def smdm_state(c: dict, mlp: str = "swiglu", seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: _rand(g, *shape) + (1 if len(shape) == 1 else 0) for k, shape in smdm_shapes(c, mlp).items()}


def smdm_forward(sd: dict[str, torch.Tensor], c: dict, ids: np.ndarray, mlp: str) -> np.ndarray:
    """TransEncoder.forward (float64): blocks x + attn(norm_1 x), x + mlp(norm_2 x); ln_f; lm_head (padded vocab)."""
    sd = {k: v.double() for k, v in sd.items()}
    groups, hs = c["n_query_groups"], c["n_embd"] // c["n_head"]
    per_kv = c["n_head"] // groups
    x = sd["transformer.wte.weight"][torch.as_tensor(ids)]
    b, n, _ = x.shape
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        qkv = (_rms(x, sd[p + "norm_1.weight"], 1e-5) @ sd[p + "attn.attn.weight"].T).view(b, n, groups, per_kv + 2, hs)
        q, k, v = qkv.split((per_kv, 1, 1), dim=-2)
        q, k, v = (z.reshape(b, n, -1, hs).transpose(1, 2) for z in (q, k, v))
        x = x + _attend(_rotate(q, 10000.0), _rotate(k, 10000.0), v) @ sd[p + "attn.proj.weight"].T
        h = _rms(x, sd[p + "norm_2.weight"], 1e-5)
        w1, w2, w3 = (sd[f"{p}mlp.{name}.weight"] for name in MLP_NAMES[mlp])
        x = x + (F.silu(h @ w1.T) * (h @ w2.T)) @ w3.T  # xformers SwiGLU: w3(silu(w1 x) * w2 x)
    return (_rms(x, sd["transformer.ln_f.weight"], 1e-5) @ sd["lm_head.weight"].T).numpy()


# ---- tests ----------------------------------------------------------------------------------------


def tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    store = WeightStore(folder)
    return {k: np.array(store.get(k)) for k in store.keys()}


@pytest.fixture(scope="module")
def llada(tmp_path_factory) -> tuple[pathlib.Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("llada") / "LLaDA-tiny"
    return folder, llada_folder(folder, LLADA)


def test_llada_folder_loads_without_shift_and_matches_its_reference(llada, tmp_path, capsys):
    folder, sd = llada
    ids = np.random.default_rng(0).integers(0, LLADA["vocab_size"], size=(2, 11))
    m = DiffusionLM.from_pretrained(folder)
    c = m.config
    assert (c.family, c.logit_shift, c.mask_token_id, c.eos_token_id, c.num_kv_heads, c.rope_theta) == (
        "llada", False, 63, 62, 2, 500000.0)
    np.testing.assert_allclose(m.logits(ids), llada_forward(sd, LLADA, ids), atol=ATOL, rtol=0)

    # dlm-jax convert both ways: LLaDA's own layout, config keys and remote code come back bit for bit
    native, back = tmp_path / "llada_jax", tmp_path / "llada_hf"
    for src, dst, to in ((folder, native, "dlm_jax"), (native, back, "hf")):
        rc, out, err = run_cli(["convert", "--src", str(src), "--dst", str(dst), "--to", to], capsys)
        assert rc == 0 and "family=llada" in out, err
    assert json.loads((back / "config.json").read_text()) == LLADA
    assert (back / "modeling_llada.py").is_file()
    original, exported = tensors(folder), tensors(back)
    assert sorted(original) == sorted(exported)
    for name, x in original.items():
        np.testing.assert_array_equal(exported[name], x, err_msg=name)

    # a llada model with no source config.json (trained here) exports a LLaDA config that reads back the same
    fresh = DiffusionLM(m.config, m.params).save_pretrained(tmp_path / "fresh", format="hf")
    generated = json.loads((fresh / "config.json").read_text())
    assert generated["model_type"] == "llada" and generated["n_kv_heads"] == 2 and not generated["weight_tying"]
    assert open_model(fresh).config == open_model(folder).config

    # the head tied to wte (no ff_out tensor) and multi-query attention spelled LLaDA's way (n_kv_heads null)
    cfg = {**LLADA, "weight_tying": True, "n_kv_heads": None, "multi_query_attention": True}
    sd = llada_folder(tmp_path / "tied", cfg)
    m = DiffusionLM.from_pretrained(tmp_path / "tied")
    assert m.config.tie_embeddings and m.config.num_kv_heads == 1
    np.testing.assert_allclose(m.logits(ids), llada_forward(sd, cfg, ids), atol=ATOL, rtol=0)


def test_llada_config_switches_we_cannot_run_are_refused(tmp_path, capsys):
    folder = tmp_path / "seq"
    llada_folder(folder, {**LLADA, "block_type": "sequential"})
    assert_one_line_error(["convert", "--src", str(folder), "--dst", str(tmp_path / "o"), "--to", "dlm_jax"],
                          capsys, contains=['block_type="sequential"', "expected \"llama\""], absent=[tmp_path / "o"])


def test_smdm_lit_gpt_files_import_and_match_their_reference(tmp_path, capsys):
    ids = np.random.default_rng(1).integers(0, SMDM["vocab_size"] + 1, size=(2, 9))  # the mask id 60 included
    preset = tmp_path / "tiny_smdm.yaml"
    preset.write_text(SMDM_YAML)

    # a Fabric training checkpoint ({"model": state dict, ...}, xformers SwiGLU names) through the CLI
    sd = smdm_state(SMDM, "swiglu")
    pth = tmp_path / "iter-000100-ckpt.pth"
    torch.save({"model": sd, "iter_num": 100, "step_count": 100}, pth)
    out_dir = tmp_path / "smdm_jax"
    rc, out, err = run_cli(["convert", "--src", str(pth), "--dst", str(out_dir), "--to", "dlm_jax",
                            "--preset", str(preset)], capsys)
    assert rc == 0 and "family=smdm" in out and "vocab=64" in out, err
    m = DiffusionLM.from_pretrained(out_dir)
    assert (m.config.logit_shift, m.config.mask_token_id, m.config.vocab_size) == (False, 60, 64)
    np.testing.assert_allclose(m.logits(ids), smdm_forward(sd, SMDM, ids, "swiglu"), atol=ATOL, rtol=0)

    # a released-style flat .safetensors with lit-gpt's fc_1/fc_2/proj names, straight to an HF LLaMA folder
    sd = smdm_state(SMDM, "fc", seed=2)
    st = tmp_path / "mdm-tiny.safetensors"
    save_file(sd, st)
    hf = tmp_path / "smdm_hf"
    rc, out, err = run_cli(["convert", "--src", str(st), "--dst", str(hf), "--to", "hf", "--preset", str(preset)],
                           capsys)
    assert rc == 0, err
    saved = json.loads((hf / "config.json").read_text())
    assert (saved["model_type"], saved["logit_shift"], saved["mask_token_id"], saved["vocab_size"]) == (
        "llama", False, 60, 64)
    m = DiffusionLM.from_pretrained(hf)
    assert not m.config.logit_shift
    np.testing.assert_allclose(m.logits(ids), smdm_forward(sd, SMDM, ids, "fc"), atol=ATOL, rtol=0)

    # without --preset the file's shapes must match a shipped smdm_* preset: one line, nothing written
    assert_one_line_error(["convert", "--src", str(st), "--dst", str(tmp_path / "none"), "--to", "dlm_jax"],
                          capsys, contains=["no shipped smdm_* preset matches", "--preset"],
                          absent=[tmp_path / "none"])
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights\n")
    assert_one_line_error(["convert", "--src", str(notes), "--dst", str(tmp_path / "none"), "--to", "dlm_jax"],
                          capsys, contains=["must be an SMDM lit-gpt checkpoint"], absent=[tmp_path / "none"])


def test_smdm_preset_is_found_from_the_file_shapes(tmp_path):
    """A file shaped like SMDM's Diff_LLaMA_6M (32000 tokens padded to 32064, + 1 embedding row) needs no --preset."""
    c = dict(n_layer=6, n_head=4, n_query_groups=4, n_embd=256, intermediate_size=1024, vocab_size=32000,
             padded=32064)
    sd = {k: torch.zeros(shape, dtype=torch.bfloat16) for k, shape in smdm_shapes(c).items()}
    sd["transformer.wte.weight"][:, 0] = torch.arange(32065) % 256  # row ids, exact in bfloat16
    path = tmp_path / "mdm-6M.safetensors"
    save_file(sd, path)
    source = open_model(path, dtype=None)
    cfg = source.config
    assert (cfg.family, cfg.num_heads, cfg.num_layers, cfg.vocab_size) == ("smdm", 4, 6, 32064)
    assert cfg.mask_token_id == 32000 and cfg.param_dtype == "bfloat16" and not cfg.logit_shift
    embed = source.leaves[("embed", "embedding")]
    assert embed.shape == (32064, 256)  # the 32065th row, never fed (the mask is 32000), is dropped
    np.testing.assert_array_equal(embed.read(31999, 32064)[[0, 1, -1], 0].astype(np.float32),
                                  [31999 % 256, 32000 % 256, 32063 % 256])
