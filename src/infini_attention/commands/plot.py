"""``infini plot gates|ppl|passkey``: gate scores per layer and head (Figure 3); perplexity by position;
passkey accuracy by length and depth."""

from __future__ import annotations

import argparse
from pathlib import Path

from .eval import add_text_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="plot the gate scores (Figure 3) or perplexity by position",
        description="Write plots: the memory gates of a model, or perplexity by position with the memory "
        "on and off.",
    )
    actions = p.add_subparsers(dest="plot_command", metavar="WHAT", required=True)

    gates = actions.add_parser(
        "gates",
        help="sigmoid(beta) per layer and head (the paper's Figure 3)",
        description="Heatmap of the gate scores sigmoid(beta) per layer and head: 0 reads only local "
        "attention, 1 only the memory; the title gives the shares near 0, near 1 and in between.",
    )
    gates.add_argument("--model", required=True, help="checkpoint folder or shipped name ('default')")
    gates.add_argument("--device", default=None, help=argparse.SUPPRESS)
    gates.add_argument("--out", default="gates.png", help="output image (default: gates.png)")

    ppl = actions.add_parser(
        "ppl",
        help="perplexity by position bucket, memory on vs off",
        description="Plot perplexity per position bucket with the memory on and off, from the JSON of "
        "'infini eval ppl --json' (--results) or computed now (--model with --text or --split).",
    )
    src = ppl.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", metavar="JSON", help="results written by 'infini eval ppl --json'")
    src.add_argument("--model", help="compute the results with this model (needs --text or --split)")
    ppl.add_argument("--device", default=None, help="torch device for --model")
    add_text_args(ppl, required=False)
    ppl.add_argument("--no-memory-off", action="store_true", help=argparse.SUPPRESS)
    ppl.add_argument(
        "--memory-reset", action="store_true", help="with --model: also the memory-emptied-per-segment bars"
    )
    ppl.add_argument("--out", default="ppl.png", help="output image (default: ppl.png)")

    pk = actions.add_parser(
        "passkey",
        help="passkey accuracy heatmap, length x key position",
        description="Heatmap of passkey retrieval accuracy by prompt length and key depth, from the JSON "
        "of 'infini eval passkey --json'. Several files (separate runs of the same model, e.g. 32K-512K "
        "and 1M) are joined into one table; a cell in two files is an error.",
    )
    pk.add_argument(
        "--results",
        metavar="JSON",
        nargs="+",
        required=True,
        help="written by 'infini eval passkey --json' (one or more)",
    )
    pk.add_argument("--json", default=None, help="also write the joined results here")
    pk.add_argument("--title", default=None, help="plot title")
    pk.add_argument("--out", default="passkey.png", help="output image (default: passkey.png)")


def _check_out(path: str) -> None:
    if not Path(path).expanduser().resolve().parent.is_dir():
        raise FileNotFoundError(f"folder for {path} does not exist")


def _read_results(path: str) -> dict:
    import json

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a JSON results file ({err})") from None


def run(args: argparse.Namespace) -> int:
    _check_out(args.out)
    if args.plot_command == "gates":
        from ..eval.plots import plot_gates
        from .eval import load_model

        model, _ = load_model(args)
        s = plot_gates(model, args.out)
        print(
            f"gates written to {args.out}: {s['heads']} heads, {s['near_0']} near 0, "
            f"{s['near_1']} near 1, {s['mixers']} mixers"
        )
        return 0

    if args.plot_command == "passkey":
        from ..eval.passkey import format_passkey_table, join_passkey_results
        from ..eval.plots import plot_passkey

        parts = [_read_results(path) for path in args.results]
        results = parts[0] if len(parts) == 1 else join_passkey_results(parts, args.results)
        plot_passkey(results, args.out, title=args.title)
        if args.json is not None:
            from ..eval.summarize import write_json_atomic

            _check_out(args.json)
            write_json_atomic(args.json, results)
        if len(parts) > 1:
            print(format_passkey_table(results))
        print(
            f"passkey heatmap written to {args.out}"
            + (f", joined results to {args.json}" if args.json else "")
        )
        return 0

    from ..eval.plots import plot_ppl

    if args.results is not None:
        if args.text is not None or args.split is not None:
            raise ValueError("--text/--split go with --model, not with --results")
        results = _read_results(args.results)
    else:
        if args.text is None and args.split is None:
            raise ValueError("--model needs --text FILE or --split eval to compute perplexity")
        from .eval import run_ppl

        results = run_ppl(args)
    plot_ppl(results, args.out)
    print(f"perplexity plot written to {args.out}")
    return 0
