"""``infini eval ppl|passkey|summarize``: streamed perplexity by position (memory on/off); passkey
retrieval; abstractive summarisation scored with ROUGE."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="checkpoint folder or shipped name ('default')")
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
        "--haystack",
        default="repeated",
        choices=["repeated", "books", "two-keys", "rephrased"],
        help="the paper's repeated filler (default), or a harder variant: real book text as filler "
        "(needs `infini data books`), a second 5-digit number in the haystack, or the key sentence "
        "worded differently (docs/passkey.md)",
    )
    pk.add_argument(
        "--no-shared-prefix",
        action="store_true",
        help="stream every prompt from its first token (default: the filler before the keys once per cell)",
    )
    pk.add_argument("--plot", metavar="PNG", default=None, help="also write the accuracy heatmap")
    pk.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON")
    add_summarize_parser(actions)


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

    if args.eval_command == "summarize":
        from ..eval.summarize import format_summary_table, write_json_atomic

        results = run_summarize(args)
        print(format_summary_table(results))
        if args.json:
            write_json_atomic(args.json, results)
            print(f"results written to {args.json}")
        return 0

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
            haystack=args.haystack,
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


# ---- infini eval summarize ----------------------------------------------------------------------

# flags that only make sense when a model writes the summaries (rejected with --baseline lead)
_MODEL_ONLY = {
    "model": "--model",
    "device": "--device",
    "memory_off": "--memory-off",
    "greedy": "--greedy",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "max_new_tokens": "--max-new-tokens",
    "max_input_tokens": "--max-input-tokens",
    "haystack_tokens": "--haystack-tokens",
    "haystack_depth": "--haystack-depth",
}


def add_summarize_parser(actions: argparse._SubParsersAction) -> None:
    from ..eval.summarize import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P

    sm = actions.add_parser(
        "summarize",
        help="abstractive summarisation scored with ROUGE-1/2/L/Lsum (aclsum or a .jsonl file)",
        description="Stream each document through the model (any length, bounded memory), decode a "
        "summary after an 'Abstract:' cue and score it against the reference with ROUGE F-measures; "
        "'overall' is the geometric mean of R-1, R-2 and R-L, as in the paper's Table 4. "
        "--baseline lead scores the document's first sentences instead (no model).",
    )
    add_model_args(sm, required=False)
    sm.add_argument(
        "--data", required=True, help="'aclsum' (pip install --no-deps aclsum==0.1.2) or a .jsonl file"
    )
    sm.add_argument(
        "--split", choices=["train", "val", "test"], default=None, help="aclsum split (default: test)"
    )
    sm.add_argument(
        "--document-field", default=None, help="the .jsonl field holding the document (default: document)"
    )
    sm.add_argument(
        "--summary-field", default=None, help="the .jsonl field holding the summary (default: summary)"
    )
    sm.add_argument("--limit", type=int, default=None, help="evaluate only the first N documents")
    sm.add_argument(
        "--max-input-tokens",
        type=int,
        default=None,
        help="keep the first K tokens of each document (default: all of it; the memory streams any length)",
    )
    sm.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"sampling temperature (default: {DEFAULT_TEMPERATURE}, the paper's; 0 is greedy)",
    )
    sm.add_argument(
        "--top-p", type=float, default=None, help=f"nucleus sampling mass (default: {DEFAULT_TOP_P})"
    )
    sm.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    sm.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"stop a summary after this many tokens, unless EOS comes first "
        f"(default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    sm.add_argument(
        "--memory-off", action="store_true", help="ablation: gate the memory off (local attention only)"
    )
    sm.add_argument(
        "--haystack-tokens",
        default=None,
        help="long-input imitation: embed each document among other papers (aclsum: the other "
        "splits; a .jsonl: its other records) in a prompt of this many tokens (e.g. 128K, 500K)",
    )
    sm.add_argument(
        "--haystack-depth",
        type=float,
        default=None,
        help="where the document starts in the haystack: 0 first ... 1 last, before the cue (default: 0.5)",
    )
    sm.add_argument(
        "--baseline",
        choices=["lead"],
        default=None,
        help="score the first sentences of each document, up to the median reference length (no model)",
    )
    sm.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    sm.add_argument(
        "--json", metavar="OUT", default=None, help="also write settings, scores and summaries as JSON"
    )


def check_summarize_args(args: argparse.Namespace) -> None:
    """Every argument error of ``eval summarize``, found before any data or model is loaded."""
    if args.baseline is not None:
        given = [flag for name, flag in _MODEL_ONLY.items() if getattr(args, name) not in (None, False)]
        if given:
            raise ValueError(f"{given[0]} applies to model summaries, not to --baseline {args.baseline}")
    elif args.model is None:
        raise ValueError("--model is required (or --baseline lead)")
    if args.greedy and (args.temperature is not None or args.top_p is not None):
        raise ValueError("--greedy cannot be combined with --temperature or --top-p")
    if args.temperature is not None and not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.haystack_tokens is not None:
        from ..eval.passkey import parse_length

        args.haystack_tokens = parse_length(str(args.haystack_tokens))
    if args.haystack_depth is not None:
        if args.haystack_tokens is None:
            raise ValueError("--haystack-depth applies with --haystack-tokens")
        if not 0 <= args.haystack_depth <= 1:
            raise ValueError(f"--haystack-depth must be in [0, 1], got {args.haystack_depth}")
    for name in ("limit", "max_input_tokens", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.data == "aclsum":
        for name in ("document_field", "summary_field"):
            if getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies to a .jsonl file, not to aclsum")
    elif not args.data.endswith(".jsonl"):
        raise ValueError(f"--data must be 'aclsum' or a .jsonl file, got {args.data!r}")
    elif args.split is not None:
        raise ValueError("--split applies to aclsum; a .jsonl file is evaluated whole")
    _check_out(args.json)


def load_summary_docs(args: argparse.Namespace):
    """``(documents to evaluate, other documents for a haystack)``: for aclsum the haystack papers
    are the other splits' (never a paper being evaluated); for a .jsonl, all of its records."""
    from ..data.summaries import ACLSUM_SPLITS, load_aclsum, load_jsonl

    if args.data == "aclsum":
        split = args.split or "test"
        docs = load_aclsum(split)
        others = []
        if args.haystack_tokens is not None:
            others = [doc for name in ACLSUM_SPLITS if name != split for doc in load_aclsum(name)]
    else:
        docs = load_jsonl(args.data, args.document_field or "document", args.summary_field or "summary")
        others = docs
    return docs[: args.limit], others


def _command_line(args: argparse.Namespace) -> str:
    """The command, rebuilt from the parsed arguments (also right when called as ``main([...])``)."""
    import shlex

    words = ["infini", "eval", "summarize"]
    for name, value in vars(args).items():
        if name in ("command", "eval_command") or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def run_summarize(args: argparse.Namespace) -> dict:
    """Validate, load the documents (then the model), summarise and score.

    Returns ``{"meta": settings, "aggregate": mean scores, "documents": per-document records}``.
    """
    import contextlib
    import datetime

    import torch

    from .. import __version__
    from ..eval import summarize as sm

    check_summarize_args(args)
    docs, others = load_summary_docs(args)
    depth = None
    if args.haystack_tokens is not None:
        depth = 0.5 if args.haystack_depth is None else args.haystack_depth
    greedy = args.greedy or args.temperature == 0
    decoding = None
    if args.baseline is None:
        decoding = {
            "temperature": 0.0 if greedy else (args.temperature or sm.DEFAULT_TEMPERATURE),
            "top_p": 1.0 if greedy else (args.top_p or sm.DEFAULT_TOP_P),
            "greedy": greedy,
            "max_new_tokens": args.max_new_tokens or sm.DEFAULT_MAX_NEW_TOKENS,
        }
    meta = {
        "command": _command_line(args),
        "model": args.model,
        "baseline": args.baseline,
        "data": args.data,
        "split": (args.split or "test") if args.data == "aclsum" else None,
        "limit": args.limit,
        "max_input_tokens": args.max_input_tokens,
        "prompt_suffix": sm.PROMPT_SUFFIX if args.baseline is None else None,
        "titled_prompt": [sm.TITLE_HEADER, sm.TITLED_SUFFIX] if args.baseline is None else None,
        "haystack": None
        if depth is None
        else {"tokens": args.haystack_tokens, "depth": depth, "pool": len(others)},
        "decoding": decoding,
        "seed": args.seed,
        "memory_off": bool(args.memory_off) if args.baseline is None else None,
        "rouge": {"types": list(sm.ROUGE_TYPES), "use_stemmer": True, "scores": "F-measure in [0, 1]"},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "infini_attention": __version__,
    }

    def progress(i: int, record: dict) -> None:
        tokens = "" if record["input_tokens"] is None else f"{record['input_tokens']:,} tokens"
        tokens += " (truncated)" if record["truncated"] else ""
        print(
            f"  [{i + 1}/{len(docs)}] {record['id']}: {tokens + ', ' if tokens else ''}"
            f"R-1 {100 * record['rouge1']:.1f} R-2 {100 * record['rouge2']:.1f} "
            f"R-L {100 * record['rougeL']:.1f} ({record['seconds']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    placement: dict[str, dict] = {}  # haystack: where each document sits in its prompt
    with contextlib.ExitStack() as stack:
        if args.baseline == "lead":
            n_words = sm.lead_words(doc.summary for doc in docs)
            meta["lead_words"] = n_words

            def predict(doc):
                return sm.lead_summary(doc.document, n_words), None, False
        else:
            model, tokenizer = load_model(args)
            device = next(model.parameters()).device
            if args.memory_off:
                from ..models.transformer import memory_disabled

                stack.enter_context(memory_disabled(model))

            cache: dict = {}

            def predict(doc):
                if depth is None:
                    prompt, _, truncated = sm.prompt_ids(
                        tokenizer, doc.document, args.max_input_tokens, doc.title
                    )
                else:
                    hay = sm.haystack_prompt(
                        tokenizer,
                        doc,
                        others,
                        args.haystack_tokens,
                        depth,
                        args.seed,
                        args.max_input_tokens,
                        cache,
                    )
                    prompt, truncated = hay.ids, hay.truncated
                    placement[doc.id] = {"target_start": hay.target_start, "target_tokens": hay.target_tokens}
                generator = None
                if not decoding["greedy"]:
                    generator = torch.Generator(device=device).manual_seed(sm.sample_seed(args.seed, doc.id))
                text = sm.generate_summary(
                    model,
                    tokenizer,
                    prompt,
                    max_new_tokens=decoding["max_new_tokens"],
                    temperature=decoding["temperature"],
                    top_p=decoding["top_p"],
                    generator=generator,
                )
                return text, len(prompt), truncated

        results = sm.evaluate_summaries(docs, predict, progress)
    for record in results["documents"]:
        record.update(placement.get(record["id"], {}))
    return {"meta": meta, **results}
