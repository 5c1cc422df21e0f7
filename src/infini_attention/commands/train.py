"""``infini train``: train a model from a TOML config; ``--resume`` continues a run bit-exactly."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a TOML config (see configs/smoke.toml)",
        description="Train an Infini-Transformer as a TOML config says ([model], [data], [optim], [train]). "
        "Checkpoints go to OUT/checkpoints/step-NNNNNN, logs to OUT/metrics.csv and OUT/tb.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the run config (.toml)")
    p.add_argument(
        "--out", metavar="DIR", help="output folder (default: [train] out_dir, else runs/<config name>)"
    )
    p.add_argument(
        "--max-steps",
        type=_positive_int,
        metavar="N",
        help="stop after step N (the lr schedule still spans [train] max_steps; resume later to go on)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output folder from its latest checkpoint",
    )


def run(args: argparse.Namespace) -> int:
    from ..train import load_config, train

    config = load_config(args.config)
    path = train(config, out_dir=args.out, max_steps=args.max_steps, resume=args.resume)
    print(f"final checkpoint: {path}")
    return 0
