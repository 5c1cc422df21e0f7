"""``infini bench table2``: the paper's Table 2 at small scale (train, evaluate and compare every
attention variant from one base config). The work is done by ``infini_attention.eval.table2``."""

from __future__ import annotations

import argparse
import shlex
import sys

VARIANTS = ("infini-linear", "infini-delta", "transformer-xl", "local", "memorizing", "rmt")  # eval.table2's


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks that reproduce the paper's tables (table2)",
        description="Reproduce a table of the paper at small scale.",
    )
    actions = p.add_subparsers(dest="bench_command", metavar="TABLE", required=True)
    t2 = actions.add_parser(
        "table2",
        help="train every attention variant alike; perplexity by position and state size",
        description="Train each variant (Infini linear/delta, Transformer-XL, local, Memorizing, RMT) "
        "from one base config, changing only the [model] keys that select it; evaluate the held-out "
        "documents streamed whole (perplexity overall and by position); report the Table 1 state size "
        "(formula and measured bytes) and the compression against Memorizing. Writes OUT/table2.md, "
        "OUT/table2.json, OUT/table2.png and the Infini gate figures. Interrupted runs resume.",
    )
    t2.add_argument(
        "--config", default="configs/table2.toml", metavar="FILE", help="base config (default: %(default)s)"
    )
    t2.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of: " + ", ".join(VARIANTS) + " (default: all)",
    )
    t2.add_argument(
        "--out", default="runs/table2", metavar="DIR", help="output folder (default: %(default)s)"
    )
    t2.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop each variant after step N (the lr schedule keeps the config's; run again to go on)",
    )
    t2.add_argument("--skip-train", action="store_true", help="only evaluate the existing checkpoints")
    t2.add_argument(
        "--eval-tokens", type=int, metavar="N", help="evaluate at most N held-out tokens (default: all)"
    )
    t2.add_argument(
        "--copy-checkpoints",
        metavar="DIR",
        help="ship each final checkpoint with bfloat16 weights (JSON and safetensors, loadable by "
        "load_pretrained) to DIR/<variant>/, e.g. checkpoints/table2, and evaluate those copies; "
        "refused over 5 MB each",
    )
    t2.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="evaluate the shipped copies DIR/<variant>/ as they are (e.g. checkpoints/table2), "
        "without training or the runs folder; how they were trained comes from their training.json",
    )


def _command_line(args: argparse.Namespace) -> str:
    """The command as parsed (also right when called as ``main(argv)``, where sys.argv is not it)."""
    words = ["infini", "bench", "table2", "--config", args.config, "--variants", args.variants]
    words += ["--out", args.out]
    for flag, value in (
        ("--max-steps", args.max_steps),
        ("--eval-tokens", args.eval_tokens),
        ("--copy-checkpoints", args.copy_checkpoints),
        ("--checkpoints", args.checkpoints),
    ):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words + (["--skip-train"] if args.skip_train else []))


def run(args: argparse.Namespace) -> int:
    from ..eval.table2 import Table2Options, run_table2

    opts = Table2Options(
        config=args.config,
        variants=args.variants,
        out=args.out,
        max_steps=args.max_steps,
        skip_train=args.skip_train,
        eval_tokens=args.eval_tokens,
        copy_checkpoints=args.copy_checkpoints,
        checkpoints=args.checkpoints,
        command=_command_line(args),
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    report = run_table2(opts)
    print(f"{args.out}/table2.md")
    for variant, row in report["variants"].items():
        ppl, nbytes = row["ppl"]["overall"]["ppl"], row["state"]["measured_bytes"]
        print(f"  {variant:<15} ppl {ppl:.2f}  state {nbytes:,} bytes")
    return 0
