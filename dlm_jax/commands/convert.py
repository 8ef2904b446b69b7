"""`dlm-jax convert`: HF folder <-> dlm_jax checkpoint, streamed tensor by tensor."""

from __future__ import annotations

import argparse
import pathlib

EXAMPLE = """example:
  dlm-jax convert --src Dream-v0-Base-7B --dst dream7b_jax --to dlm_jax --dtype bfloat16
  dlm-jax convert --src dream7b_jax --dst dream7b_hf --to hf
  dlm-jax convert --src Llama-2-7b-hf --dst smdm_like --to dlm_jax --set logit_shift=false
  dlm-jax convert --src LLaDA-8B-Instruct --dst llada8b_jax --to dlm_jax        # LLaDA's own folder
  dlm-jax convert --src mdm-113M-30e18.safetensors --dst smdm113m_jax --to dlm_jax --preset smdm_113m
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an HF (Dream/Qwen2, LLaMA, GPT-2, LLaDA) folder or an SMDM file to dlm_jax format or back",
        description=(
            "Convert checkpoints. The output keeps the source's weight dtype (unless --dtype), its config.json\n"
            "keys, tokenizer files and generation_config.json, and appears only when the conversion succeeded."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--src",
        required=True,
        help="an HF model folder (LLaDA's own included), a dlm_jax checkpoint folder, or an SMDM lit-gpt "
        "checkpoint file (.pth/.safetensors)",
    )
    p.add_argument("--dst", required=True, help="output folder (must not exist, or be empty; never the --src folder)")
    p.add_argument("--to", choices=("dlm_jax", "hf"), required=True, help="output format")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="weight dtype of the output (default: the dtype --src stores)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a --dst folder that holds a model written by dlm-jax"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runtime config override, e.g. logit_shift=false or mask_token_id=811 (repeatable)",
    )
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME|FILE.yaml",
        help="the model config of an SMDM lit-gpt file, which records no head counts: a shipped preset "
        "(smdm_113m) or a YAML file (default: the smdm_* preset whose shapes match the file)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dlm_jax.api import model_folder
    from dlm_jax.conversion.engine import convert
    from dlm_jax.models.config import parse_overrides
    from dlm_jax.output_dir import check_output_dir

    overrides = parse_overrides(args.set)
    if not pathlib.Path(args.src).is_file():  # a file is an SMDM lit-gpt checkpoint
        model_folder(args.src)
    check_output_dir(args.dst, overwrite=args.overwrite, source=args.src)
    config = convert(args.src, args.dst, args.to, dtype=args.dtype, overwrite=args.overwrite, preset=args.preset,
                     **overrides)
    print(
        f"converted {args.src}: family={config.family} layers={config.num_layers} "
        f"hidden={config.hidden_size} vocab={config.vocab_size} dtype={config.param_dtype}"
    )
    print(f"wrote {args.to} checkpoint to {args.dst}")
    return 0
