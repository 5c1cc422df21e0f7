"""``infini train``: train a model from a TOML config; ``--resume`` continues a run bit-exactly.

Under ``torchrun`` every process runs this command; ``--dist ddp|fsdp`` (or ``[train] dist``) picks
the data parallelism (``train/distributed.py``)::

    torchrun --standalone --nproc_per_node 2 -m infini_attention train --config configs/smoke.toml
"""

from __future__ import annotations

import argparse
import os

DIST = ("none", "ddp", "fsdp")  # train.config.DIST, not imported: `infini --help` must not load torch


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
    p.add_argument(
        "--dist",
        choices=DIST,
        help="data parallelism across the processes torchrun starts: ddp, fsdp (FSDP2, sharded), "
        "or none (default: [train] dist; under torchrun with several processes none means ddp)",
    )


def run(args: argparse.Namespace) -> int:
    from ..train import load_config, train

    config = load_config(args.config)
    if args.dist is not None:
        config.train.dist = args.dist
    path = train(config, out_dir=args.out, max_steps=args.max_steps, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for the run
        print(f"final checkpoint: {path}")
    return 0
