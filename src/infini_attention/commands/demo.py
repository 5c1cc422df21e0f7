"""``infini demo``: the main job on the embedded default model."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="stream 1M-token passkey prompts and a held-out book through the default model",
        description="Runs offline on the embedded default model: passkey retrieval up to 1M tokens, "
        "perplexity of a held-out book excerpt with and without the memory, tokens/s and peak memory; "
        "writes gate and perplexity plots.",
    )
    p.add_argument("--model", default="default", help="model name or checkpoint folder (default: default)")
    p.add_argument(
        "--passkey-model",
        default="passkey",
        help="model for the passkey prompts (default: passkey, the shipped retrieval model; "
        "'same' uses --model)",
    )
    p.add_argument("--out", default="infini-demo", help="folder for plots and demo.json")
    p.add_argument("--short", default="32K", help="passkey length with the key at start/middle/end (32K)")
    p.add_argument("--long", default="1M", help="passkey length with the key at the start (1M)")
    p.add_argument(
        "--trials",
        type=int,
        default=3,
        help="passkey keys per cell, also at 1M (default: 3; 1 is ~40 s faster)",
    )
    p.add_argument("--seed", type=int, default=0, help="passkey seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..eval.passkey import parse_length

    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {args.trials}")
    short, long = parse_length(args.short), parse_length(args.long)
    run_demo(
        args.model,
        passkey_model=None if args.passkey_model == "same" else args.passkey_model,
        out_dir=args.out,
        short_length=short,
        long_length=long,
        trials=args.trials,
        seed=args.seed,
    )
    return 0
