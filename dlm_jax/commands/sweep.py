"""`dlm-jax sweep`: a tiny (model size x FLOPs) grid for MDM and AR with power-law fits, table, JSON and PNG."""

from __future__ import annotations

import argparse

EXAMPLE = """example:
  dlm-jax sweep --out runs/sweep                      # default grid, a few minutes on CPU
  dlm-jax sweep --out runs/sweep --flops 2e10 6e10 2e11 6e11 --objectives mdm ar
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="tiny SMDM-style scaling sweep (MDM vs AR): table, sweep.json and sweep.png",
        description=(
            "Train every (model size, FLOPs budget, objective) point on a generated arithmetic corpus with "
            "max_steps = C / (6 N batch seq_len), then fit loss = a C^b to the best loss at each budget."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    p.add_argument("--flops", type=float, nargs="+", default=None, help="FLOPs budgets (default 2e10 6e10 2e11)")
    p.add_argument("--objectives", nargs="+", default=["mdm", "ar"], choices=["mdm", "ar"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dlm_jax.experiments.sweep import DEFAULT_FLOPS, run_sweep

    flops = tuple(args.flops) if args.flops else DEFAULT_FLOPS
    if any(c <= 0 for c in flops):
        raise ValueError(f"--flops must all be > 0, got {list(flops)}")
    summary = run_sweep(args.out, flops=flops, objectives=tuple(args.objectives), batch_size=args.batch_size,
                        seq_len=args.seq_len, lr=args.lr, seed=args.seed)
    table = Table(title="final validation loss (MDM: ELBO bound, AR: NLL; nats/token)")
    for col in ("objective", "size", "N (non-emb.)", "FLOPs", "steps", "val loss"):
        table.add_column(col, justify="right")
    for p in summary["points"]:
        table.add_row(p["objective"], p["size"], f"{p['non_embedding_params']:,}", f"{p['flops']:.1e}",
                      str(p["steps"]), f"{p['val_loss']:.4f}")
    console = Console()
    console.print(table)
    for objective, fit in summary["fits"].items():
        console.print(f"{objective.upper()}: L(C) = {fit['a']:.4g} * C^{fit['b']:.4f}")
    console.print(f"wrote {args.out}/sweep.json and {args.out}/sweep.png")
    return 0
