"""Every objective through the trainer, from tiny HF folders built here (no downloads).

DiffuGPT adaptation from a GPT-2 folder and DiffuLLaMA adaptation from a LLaMA folder run the shipped
diffugpt_adapt.yaml; Dream SFT runs the shipped dream_sft.yaml on a Dream folder with a chat template.
Only sizes, steps and paths are overridden (and the SFT learning rate: the shipped 2e-6 is a 7B model's).
Each run checks what its objective does inside the trainer's own jitted step (the attention mask the
step builds, the CART weights it uses, recorded as the step runs), that the loss falls on a learnable
toy task, that the checkpoint's shapes and token ids won over the preset, and that the exported model opens.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest
import readme_standins as standins
from cli_checks import assert_one_line_error, run_cli

from dlm_jax.api import DiffusionLM
from dlm_jax.diffusion import masking, weights
from dlm_jax.models.config import ModelConfig
from dlm_jax.training.config import TrainConfig, load_experiment
from dlm_jax.training.trainer import Trainer, objective_attention

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "configs" / "experiments"
STEPS, ANNEAL, SEQ = 40, 20, 32
SIZES = (f"train.max_steps={STEPS}", "train.batch_size=8", f"train.seq_len={SEQ}", "train.warmup_steps=4",
         "train.log_every=1", "train.eval_every=0", "checkpoint.every=0")


def _falls(history: list[dict], key: str = "ce") -> tuple[float, float]:
    """Mean of `key` over the first and the last quarter of the logged steps."""
    values = [r[key] for r in history]
    quarter = len(values) // 4
    return float(np.mean(values[:quarter])), float(np.mean(values[-quarter:]))


def _params_equal(exported: DiffusionLM, params) -> None:
    for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(jax.device_get(params)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> pathlib.Path:
    """A tiny HF GPT-2 with 128 learned positions (diffugpt_s has 1024) and its tokenizer."""
    return standins.gpt2(tmp_path_factory.mktemp("gpt2") / "gpt2", n_positions=128)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> pathlib.Path:
    return standins.llama(tmp_path_factory.mktemp("llama") / "llama", vocab_size=256, mask_token_id=255)


KEPT = {  # the checkpoint's shape fields and ids, which must survive the diffugpt_s preset (768, 1024, 50256, ...)
    "gpt2": {"family": "gpt2", "hidden_size": 32, "max_position_embeddings": 128, "eos_token_id": 254,
             "bos_token_id": 254, "mask_token_id": 255},
    "llama": {"family": "llama", "hidden_size": 32, "num_kv_heads": 2, "position_kind": "rope",
              "max_position_embeddings": 2048, "eos_token_id": 2, "bos_token_id": 1, "mask_token_id": 255},
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(KEPT))
def test_adaptation_anneals_causal_to_bidirectional_and_learns(arch, tmp_path, monkeypatch, request):
    ckpt, kept = request.getfixturevalue(f"{arch}_folder"), KEPT[arch]
    pattern = " ".join(["the king has more apples than the queen ."] * 6)  # a learnable repeated pattern
    standins.write_jsonl(tmp_path / "train.jsonl", [{"text": pattern}] * 32)
    bias_at: dict[int, np.ndarray] = {}
    real_bias = masking.anneal_attention_bias

    def recording_bias(rng, step, seq_len, anneal_steps):
        bias = real_bias(rng, step, seq_len, anneal_steps)
        jax.debug.callback(lambda s, b: bias_at.setdefault(int(s), np.asarray(b)), step, bias)  # as the step runs
        return bias

    monkeypatch.setattr(masking, "anneal_attention_bias", recording_bias)
    exp = load_experiment(EXPERIMENTS / "diffugpt_adapt.yaml", [
        *SIZES, f"train.anneal_steps={ANNEAL}", f"data.path={tmp_path / 'train.jsonl'}", "data.val_path=",
        f"data.tokenizer={ckpt}", f"checkpoint.init_from={ckpt}",
        f"logging.out_dir={tmp_path / 'run'}"])
    trainer = Trainer(exp, progress=False, devices=jax.devices()[:1])  # one device: a faster compile
    result = trainer.run()
    jax.effects_barrier()  # every recorded callback has run

    config = trainer.model_config
    assert {k: getattr(config, k) for k in kept} == kept  # the checkpoint's, not diffugpt_s's (768, 50256, ...)
    assert (config.logit_shift, config.attention_mode, trainer.train_config.objective) == (
        True, "bidirectional", "diffullama")
    # The mask the step used: causal links always, plus a Bernoulli((step + 1) / anneal_steps) share of the
    # rest (DiffuLLaMA's schedule): about causal at step 0, everything from step anneal_steps - 1 on.
    assert sorted(bias_at) == list(range(STEPS))
    causal = np.tril(np.ones((SEQ, SEQ), bool))
    shares = []
    for step in range(STEPS):
        bias = bias_at[step]
        assert bias.shape == (1, 1, SEQ, SEQ) and bias[0, 0][causal].all()
        shares.append(bias[0, 0][~causal].mean())
    expected = np.minimum(1.0, (np.arange(STEPS) + 1) / ANNEAL)
    np.testing.assert_allclose(shares, expected, atol=0.08)
    assert shares[0] < 0.1 and all(s == 1.0 for s in shares[ANNEAL - 1:])
    first, last = _falls(result.history)  # masked-token CE: the 1/t-weighted loss is too noisy over 40 steps
    assert last < first - 0.2, (first, last)  # seen: 5.42 -> 4.99 (GPT-2), 5.47 -> 5.09 (LLaMA)
    exported = DiffusionLM.from_pretrained(tmp_path / "run" / "model")
    assert exported.config == config
    _params_equal(exported, result.state.params)
    prompt = trainer.tokenizer.encode("the king has")
    tokens = exported.diffusion_generate(np.array([prompt]), max_new_tokens=8, steps=8).sequences
    assert tokens.shape == (1, len(prompt) + 8) and tokens[0, :len(prompt)].tolist() == prompt
    assert (tokens != config.mask_token_id).all()  # every masked position was decoded


def test_annealing_trains_bidirectional_attention_whatever_the_checkpoint_mode():
    """A causal checkpoint (e.g. an AR run's export) anneals too: the mask, not the mode, starts causal."""
    causal = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                         mask_token_id=63, attention_mode="causal")
    for objective, anneal_steps, mode in (("diffullama", 10, "bidirectional"), ("diffullama", 0, "bidirectional"),
                                          ("dream", 0, "bidirectional"), ("ar", 0, "causal")):
        train = TrainConfig(objective=objective, anneal_steps=anneal_steps)
        assert objective_attention(causal, train).attention_mode == mode
    with pytest.raises(ValueError, match="train.objective=diffullama needs a mask token, .* set model.mask_token_id"):
        objective_attention(causal.replace(mask_token_id=None), TrainConfig(objective="diffullama"))


def _cart_reference(masked: np.ndarray, p: float) -> np.ndarray:
    """Dream's CART weight by its definition: w[n] = 0.5 * sum over clean i of p (1 - p)^(|n - i| - 1)."""
    out = np.zeros(masked.shape)
    for row, n in zip(*np.nonzero(masked), strict=True):
        clean = np.nonzero(~masked[row])[0]
        out[row, n] = 0.5 * np.sum(p * (1 - p) ** (np.abs(n - clean) - 1.0))
    return out


QA = [("what is the capital of france ?", "paris is the capital ."), ("tell me about the sky", "the sky is blue ."),
      ("is the sun hot or cold ?", "the sun is hot ."), ("who lived in the house ?", "a king lived there .")]


@pytest.mark.slow
def test_dream_sft_uses_the_chat_template_and_cart_weights_and_learns(tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    standins.dream(tmp_path / "Dream-v0-Base-7B", instruct=True)
    standins.write_jsonl(tmp_path / "data" / "sft.jsonl",
                         [{"prompt": [{"role": "user", "content": q}], "response": a} for q, a in QA * 8])
    cart_seen: list[tuple[np.ndarray, np.ndarray]] = []  # (masked, weights) of the first step
    cart_p_traced = []
    real_cart = weights.cart_weights

    def keep_first(masked, w) -> None:
        if not cart_seen:
            cart_seen.append((np.asarray(masked), np.asarray(w)))

    def recording_cart(masked, p):
        w = real_cart(masked, p)
        cart_p_traced.append(p)
        jax.debug.callback(keep_first, masked, w)  # as the step runs
        return w

    monkeypatch.setattr(weights, "cart_weights", recording_cart)
    monkeypatch.chdir(tmp_path)  # the shipped paths: Dream-v0-Base-7B, data/sft.jsonl, runs/dream_sft
    exp = load_experiment(EXPERIMENTS / "dream_sft.yaml", [*SIZES, "train.lr=1e-3"])
    trainer = Trainer(exp, progress=False, devices=jax.devices()[:1])  # one device: a faster compile
    result = trainer.run()
    jax.effects_barrier()

    tc, config = trainer.train_config, trainer.model_config
    assert (tc.objective, tc.time_weighting, tc.cart_p, config.logit_shift) == ("dream", "cart", 0.3, True)
    assert (config.hidden_size, config.vocab_size, config.mask_token_id) == (64, 300, 299)  # the checkpoint's
    # The step traced CART with the config's p, and its weights match the definition on the masks it drew.
    assert cart_p_traced == [0.3]
    masked, w = cart_seen[0]
    assert masked.any() and (~masked).any()
    np.testing.assert_allclose(w, _cart_reference(masked, 0.3), rtol=1e-5, atol=1e-7)
    # Rows are the chat template's prompt (never noised) + the response.
    batch = next(iter(trainer.train_ds))
    reference = AutoTokenizer.from_pretrained(tmp_path / "Dream-v0-Base-7B")
    prompts = {tuple(reference.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]) for q, _ in QA}
    row_prompt = tuple(int(i) for i, m in zip(batch["input_ids"][0], batch["prompt_mask"][0], strict=True) if m)
    assert row_prompt in prompts and reference.convert_tokens_to_ids("<|im_start|>") == row_prompt[0]
    first, last = _falls(result.history, "loss")
    assert last < 0.7 * first, (first, last)
    model_dir = tmp_path / "runs" / "dream_sft" / "model"
    rc, out, err = run_cli(["generate", "--model", str(model_dir), "--prompt", QA[0][0], "--max-new-tokens", "8",
                            "--steps", "8", "--chat-template"], capsys)
    assert rc == 0, err[-2000:]
    taught = {word for q, a in QA for word in f"{q} {a}".split()}
    assert out.split() and set(out.split()) <= taught, out  # words it was taught, of 300 in the vocabulary


def test_init_from_seq_len_past_the_checkpoint_positions_is_one_error_before_anything_is_written(
        gpt2_folder, tmp_path, capsys):
    """The GPT-2 keeps its 128 positions under diffugpt_s (1024), so the shipped seq_len of 1024 cannot fit."""
    data = standins.pretraining_data(tmp_path / "data" / "train.jsonl")
    argv = ["train", "--config", str(EXPERIMENTS / "diffugpt_adapt.yaml"), "--out", str(tmp_path / "run"),
            "--set", f"checkpoint.init_from={gpt2_folder}", "--set", f"data.tokenizer={gpt2_folder}",
            "--set", f"data.path={data}",
            "--set", f"data.val_path={data.with_name('val.jsonl')}"]
    assert_one_line_error(argv, capsys, absent=[tmp_path / "run"], contains=[
        "train.seq_len=1024 exceeds max_position_embeddings=128 of checkpoint.init_from=", "set train.seq_len<=128"])
