"""Inference on a device mesh (8 virtual CPU devices): the same tokens and likelihoods as on one device."""

import json
import pathlib
import socket
import subprocess
import sys

import hf_models
import jax
import numpy as np
import pytest

from dlm_jax.api import DiffusionLM
from dlm_jax.models.config import ModelConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
MESH = "fsdp=4,tensor=2"


def _on_mesh(model: DiffusionLM) -> None:
    """Every param lives on all 8 devices, placed by the training rules (embedding: vocab on tensor, embed on fsdp)."""
    assert dict(model.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    for leaf in jax.tree.leaves(model.params):
        assert len(leaf.sharding.device_set) == 8
    assert tuple(model.params["embed"]["embedding"].sharding.spec) == ("tensor", "fsdp")
    kernel = model.params["layers"]["mlp"]["up"]["kernel"]  # [layers, embed, mlp]: one device holds 1/8
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0], kernel.shape[1] // 4, kernel.shape[2] // 2)


@pytest.mark.slow
def test_dream_cli_tokens_and_harness_loglikelihoods_match_one_device(data_dir, tmp_path, capsys):
    """Dream (shifted logits): `generate --mesh` prints the same sampled text (padded batch, temperature > 0), and
    the lm-eval backend with `mesh=` in its model_args gives the same ELBO log-likelihoods."""
    from lm_eval.api.instance import Instance

    from dlm_jax.cli import main
    from dlm_jax.evaluation.harness import DLMJaxLM

    folder = hf_models.dream_with_word_tokenizer(data_dir, tmp_path / "dream")
    argv = ["generate", "--model", str(folder), "--prompt", "w5 w17 w42", "--prompt", "w3", "--max-new-tokens", "4",
            "--steps", "4", "--alg", "entropy", "--temperature", "0.5", "--pad-multiple", "1"]
    assert main(argv) == 0
    expected = capsys.readouterr().out
    assert main([*argv, "--mesh", "data=2,fsdp=2,tensor=2"]) == 0
    assert capsys.readouterr().out == expected and expected.count("\n") == 2
    assert main([*argv, "--mesh", "fsdp=3"]) == 2
    assert "has 3 devices but 8 are available" in capsys.readouterr().err

    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate([("w5 w17", " w42 w3"), ("w9", " w8")])]
    args = dict(pretrained=str(folder), estimator="elbo", mc_num=4, greedy_check=False)
    one, mesh = DLMJaxLM(**args), DLMJaxLM(**args, mesh="fsdp=4;tensor=2")
    _on_mesh(mesh.model)
    assert mesh.model_args["mesh"] == MESH
    ref, got = one.loglikelihood(requests), mesh.loglikelihood(requests)
    np.testing.assert_allclose([ll for ll, _ in got], [ll for ll, _ in ref], rtol=1e-5)
    assert all(ll < 0 for ll, _ in ref)


@pytest.mark.slow
def test_llada_blocks_cfg_and_diffullama_tokens_match_one_device(data_dir):
    """LLaDA-style (unshifted, semi-autoregressive blocks + CFG, batch rows split over fsdp) against one device,
    and DiffuLLaMA's top-k schedule against DiffuLLaMA's own sampler (which one device reproduces exactly:
    test_sampling_parity)."""
    folder = data_dir / "parity" / "llada" / "model"
    one = DiffusionLM.from_pretrained(folder, logit_shift=False)
    mesh = DiffusionLM.from_pretrained(folder, logit_shift=False, mesh="fsdp=2,tensor=4")  # 2 rows: one per fsdp
    ids = np.array([[12, 40, 7, 99, 3, 150], [1, 2, 3, 4, 5, 6]])
    call = dict(max_new_tokens=8, steps=4, block_length=4, remasking="low_confidence", cfg_scale=1.0)
    expected = one.diffusion_generate(ids, **call)
    got = mesh.diffusion_generate(ids, **call)
    np.testing.assert_array_equal(got.sequences, expected.sequences)
    assert got.nfe.tolist() == [8, 8] and (expected.sequences[:, 6:] != 259).all()  # 2 passes a step; all decoded

    folder = data_dir / "parity" / "diffullama"
    vectors = np.load(folder / "vectors.npz")
    mesh = DiffusionLM.from_pretrained(folder / "model", mesh=MESH)
    out = mesh.diffusion_generate(vectors["diffullama_topk_temp.input_ids"],
                                  src_mask=vectors["diffullama_topk_temp.src_mask"], steps=4, alg="diffullama",
                                  logits_temp=0.9, temperature=0.0)
    np.testing.assert_array_equal(out.sequences[:, 1:], vectors["diffullama_topk_temp.output"])


def test_init_on_a_mesh_is_born_sharded_and_bad_meshes_are_one_error():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                      mask_token_id=63)
    mesh = DiffusionLM.init(cfg, seed=1, mesh="fsdp=8")
    assert tuple(mesh.params["layers"]["attn"]["q"]["kernel"].sharding.spec) == (None, "fsdp", "tensor", None)
    with pytest.raises(ValueError, match="has 16 devices but 8 are available"):
        DiffusionLM.init(cfg, mesh="fsdp=8,tensor=2")
    with pytest.raises(ValueError, match="of size 4 is not divisible by mesh axis tensor=8"):
        DiffusionLM.init(cfg, mesh="fsdp=1,tensor=8")


@pytest.mark.slow
def test_two_processes_evaluate_in_lockstep_like_one_device(data_dir, tmp_path, capsys):
    """`dlm-jax eval --mesh fsdp=8` in 2 processes x 4 CPU devices (launch/local.py): every process scores every
    request on the one global mesh, process 0 alone prints and writes; the ELBO perplexity equals one device's."""
    from dlm_jax.cli import main

    folder = hf_models.dream_with_word_tokenizer(data_dir, tmp_path / "dream")
    corpus = tmp_path / "val.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("w5 w6 w7 w8", "w9 w10 w11", "w3 w4")))
    argv = ["eval", "--model", str(folder), "--tasks", "perplexity", "--data", f"perplexity={corpus}",
            "--mc-num", "4", "--batch-size", "4"]
    assert main([*argv, "--output", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli = "import sys; from dlm_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, str(ROOT / "launch" / "local.py"), "--num-processes", "2", "--cpu-devices", "4",
           "--port", str(port), "--", sys.executable, "-c", cli, *argv, "--mesh", "fsdp=8",
           "--output", str(tmp_path / "two.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("perplexity: ") == 1 and proc.stdout.count("wrote ") == 1  # process 0 only
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["config"]["model_args"]["mesh"] == "fsdp=8"
    expected = one["results"]["perplexity"]["ppl_upper_bound,none"]
    assert expected > 1
    np.testing.assert_allclose(two["results"]["perplexity"]["ppl_upper_bound,none"], expected, rtol=1e-5)
