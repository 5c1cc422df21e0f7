"""``infini check``: the fast op against the reference on this machine."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="verify the fast op against the reference on this machine",
        description="Compare the fast op with the literal reference (outputs, state, gradients) and "
        "check that a stream split at random points equals one call, on random inputs.",
    )
    p.add_argument("--device", default="cpu", help="torch device to check (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    from ..selfcheck import run_selfcheck

    return 0 if run_selfcheck(args.device, args.seed) else 1
