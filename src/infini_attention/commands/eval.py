"""``infini eval ppl|passkey``: streamed perplexity by position (memory on/off); passkey retrieval."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder or shipped name ('default')")
    p.add_argument("--device", default=None, help="torch device (default: where load_pretrained puts it)")


def add_text_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--text", metavar="FILE", help="a UTF-8 text file to evaluate (one document)")
    src.add_argument(
        "--split", choices=["eval", "train"], help="a split of a prepared corpus (see --data), e.g. eval"
    )
    p.add_argument("--data", default="books", help="corpus for --split (default: books)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens in all")


def load_model(args: argparse.Namespace):
    """``(model, tokenizer)`` from ``--model`` (and ``--device``), in eval mode."""
    from ..pretrained import load_pretrained

    model, tokenizer = load_pretrained(args.model, device=args.device)
    model.eval()
    return model, tokenizer


def check_text_args(args: argparse.Namespace) -> None:
    """Errors in ``--text``/``--max-tokens`` found before the model is loaded."""
    if args.max_tokens is not None and args.max_tokens < 2:
        raise ValueError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    if args.text is not None and not Path(args.text).expanduser().is_file():
        raise FileNotFoundError(f"text file not found: {args.text}")


def load_docs(args: argparse.Namespace, tokenizer):
    """Documents of ``--text FILE`` or ``--split NAME [--data CORPUS]``, in the model's tokenizer."""
    check_text_args(args)
    if args.text is not None:
        path = Path(args.text).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{args.text} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        ids = tokenizer.encode(text)
        if len(ids) < 2:
            raise ValueError(f"{args.text} has fewer than 2 tokens: nothing to evaluate")
        return [(path.name, ids)]
    import tempfile

    from ..data.prepare import prepare_data

    # prepare_data tokenises with a tokenizer.json: write the model's (its content keys the cache)
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = Path(tmp) / "tokenizer.json"
        tokenizer.save(tok_file)
        data = prepare_data(args.data, tokenizer=str(tok_file))
    shards = getattr(data, args.split)
    if shards.num_docs == 0:
        raise ValueError(f"the {args.split} split of {args.data} has no documents")
    return shards


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity by position (memory on/off) or passkey retrieval",
        description="Evaluate a model: streamed perplexity of whole documents, or passkey retrieval.",
    )
    actions = p.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    ppl = actions.add_parser(
        "ppl",
        help="perplexity overall and by position in the document, with the memory on and off",
        description="Stream whole documents of any length through the model (bounded memory) and report "
        "perplexity overall and per position bucket (0-2K, 2K-8K, 8K-32K, 32K+ tokens into the "
        "document), with the memory on and gated off (local attention only).",
    )
    add_model_args(ppl)
    add_text_args(ppl)
    ppl.add_argument("--no-memory-off", action="store_true", help="skip the memory-off pass (half the time)")
    ppl.add_argument(
        "--memory-reset",
        action="store_true",
        help="also stream with the memory emptied at every segment (gates untouched): the gap to "
        "'memory on' is what the memory carries across segments",
    )
    ppl.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON")

    pk = actions.add_parser(
        "passkey",
        help="passkey retrieval accuracy (the paper's prompt, greedy decoding)",
        description="Hide a random 5-digit key in the paper's passkey prompt of each length (in tokens) at "
        "each position, decode greedily and report exact-match accuracy (rows: positions, columns: "
        "lengths).",
    )
    add_model_args(pk)
    pk.add_argument(
        "--lengths",
        default="32768",
        help="comma-separated prompt lengths in tokens, e.g. 32768,131072 or 32K,1M (default: 32768)",
    )
    pk.add_argument(
        "--positions",
        default="start,middle,end",
        help="comma-separated among start, middle, end (default: all)",
    )
    pk.add_argument("--trials", type=int, default=5, help="random keys per cell (default: 5)")
    pk.add_argument("--seed", type=int, default=0, help="random seed for keys and depths (default: 0)")
    pk.add_argument(
        "--bf16",
        action="store_true",
        help="compute in bfloat16 (torch.autocast); the memory stays float32 (faster on CPUs with bf16)",
    )
    pk.add_argument(
        "--memory-off",
        action="store_true",
        help="ablation: gate the memory off (local attention only), to show what the memory retrieves",
    )
    pk.add_argument(
        "--no-shared-prefix",
        action="store_true",
        help="stream every prompt from its first token (default: the filler before the keys once per cell)",
    )
    pk.add_argument("--plot", metavar="PNG", default=None, help="also write the accuracy heatmap")
    pk.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON")


def parse_passkey_args(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    from ..eval.passkey import POSITIONS, parse_length

    lengths = [parse_length(s) for s in args.lengths.split(",") if s.strip()]
    positions = [s.strip() for s in args.positions.split(",") if s.strip()]
    if not lengths:
        raise ValueError("--lengths needs at least one length")
    if not positions:
        raise ValueError("--positions needs at least one of start, middle, end")
    bad = [p for p in positions if p not in POSITIONS]
    if bad:
        raise ValueError(f"unknown position {bad[0]!r} (choose among {', '.join(POSITIONS)})")
    if args.trials < 1:
        raise ValueError(f"--trials must be at least 1, got {args.trials}")
    return lengths, positions


def _check_out(path: str | None) -> None:
    if path is not None and not Path(path).expanduser().resolve().parent.is_dir():
        raise FileNotFoundError(f"folder for {path} does not exist")


def _write_json(path: str, data: dict) -> None:
    import json

    Path(path).expanduser().write_text(json.dumps(data, indent=1) + "\n")
    print(f"results written to {path}")


def run_ppl(args: argparse.Namespace) -> dict:
    """Load, evaluate and return ``evaluate_ppl``'s results (shared with ``infini plot ppl``)."""
    from ..eval.perplexity import evaluate_ppl

    check_text_args(args)
    model, tokenizer = load_model(args)
    docs = load_docs(args, tokenizer)
    total = docs.num_tokens if hasattr(docs, "num_tokens") else sum(len(ids) for _, ids in docs)
    if args.max_tokens is not None:
        total = min(total, args.max_tokens)
    passes = 1 + (not args.no_memory_off) + args.memory_reset
    bar = _progress_bar(total * passes)
    try:
        return evaluate_ppl(
            model,
            docs,
            max_tokens=args.max_tokens,
            memory_off=not args.no_memory_off,
            memory_reset=args.memory_reset,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(total: int):
    """A tqdm bar on stderr when it is a terminal (None otherwise, or without tqdm)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(total=total, unit="tok", unit_scale=True, desc="perplexity", file=sys.stderr, leave=False)


def run(args: argparse.Namespace) -> int:
    import contextlib

    import torch

    if args.eval_command == "ppl":
        from ..eval.perplexity import format_ppl_table

        _check_out(args.json)
        results = run_ppl(args)
        print(format_ppl_table(results))
        if args.json:
            _write_json(args.json, results)
        return 0

    from ..eval.passkey import format_passkey_table, run_passkey
    from ..eval.perplexity import format_tokens

    lengths, positions = parse_passkey_args(args)
    _check_out(args.json)
    model, tokenizer = load_model(args)

    def progress(cell: dict) -> None:
        print(
            f"  {format_tokens(cell['length'])} {cell['position']}: {cell['correct']}/{cell['trials']} "
            f"({cell['seconds']:.1f} s, {cell['tokens_per_s'] or 0:,.0f} tokens/s)",
            file=sys.stderr,
            flush=True,
        )

    _check_out(args.plot)
    with contextlib.ExitStack() as stack:
        if args.bf16:
            device_type = next(model.parameters()).device.type
            stack.enter_context(torch.autocast(device_type=device_type, dtype=torch.bfloat16))
        if args.memory_off:
            from ..models.transformer import memory_disabled

            stack.enter_context(memory_disabled(model))
        results = run_passkey(
            model,
            tokenizer,
            lengths,
            positions,
            args.trials,
            args.seed,
            share_prefix=not args.no_shared_prefix,
            progress=progress,
        )
    results.update(model=str(args.model), bf16=bool(args.bf16), memory_off=bool(args.memory_off))
    print(format_passkey_table(results))
    if args.json:
        _write_json(args.json, results)
    if args.plot:
        from ..eval.plots import plot_passkey

        plot_passkey(results, args.plot)
    return 0
