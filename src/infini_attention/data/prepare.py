"""``prepare_data``: corpus -> tokenizer + memory-mapped train/eval shards, cached on disk.

The result lives in ``<cache>/prepared/<corpus>-<key>/`` (``tokenizer.json``, ``train.{bin,json}``,
``eval.{bin,json}``, ``meta.json``), where the key hashes everything the result depends on: the
corpus's identity (file names, sizes, mtimes), the tokenizer (its file's content) or the vocabulary
size to train, the eval fraction and the text field. A second call with the same inputs reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import corpus as corpus_mod
from .shards import TokenShards
from .tokenizer import Tokenizer

FORMAT = 1


@dataclass
class PreparedData:
    dir: Path
    tokenizer: Tokenizer
    train: TokenShards
    eval: TokenShards


def _cache_key(
    corpus: str, tokenizer: str | None, vocab_size: int, eval_fraction: float, text_field: str
) -> str:
    tok = None
    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {tokenizer}")
        tok = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = {
        "format": FORMAT,
        "corpus": corpus_mod.identity(corpus),
        "tokenizer": tok,
        "vocab_size": vocab_size if tokenizer is None else None,  # unused with a given tokenizer
        "eval_fraction": eval_fraction,
        "text_field": text_field,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _slug(corpus: str) -> str:
    name = Path(corpus.rstrip("/\\")).name or "corpus"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40]


def _open(d: Path) -> PreparedData:
    return PreparedData(
        d, Tokenizer.from_file(d / "tokenizer.json"), TokenShards(d, "train"), TokenShards(d, "eval")
    )


def prepare_data(
    corpus: str,
    *,
    tokenizer: str | None = None,
    vocab_size: int = 8192,
    cache_dir: str | Path | None = None,
    eval_fraction: float = 0.05,
    text_field: str = "text",
) -> PreparedData:
    """Tokenise ``corpus`` (see ``corpus.load_corpus`` for the accepted forms) into cached shards.

    ``tokenizer`` None trains a byte-level BPE of ``vocab_size`` entries on the training split;
    otherwise it is the path of a Hugging Face ``tokenizer.json``.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else corpus_mod.default_cache_dir()
    if corpus == "books":  # build the books first: their files' mtimes are then part of the key
        from .books import build_books

        corpus = str(build_books(cache / "books"))
    key = _cache_key(corpus, tokenizer, vocab_size, eval_fraction, text_field)
    out = cache / "prepared" / f"{_slug(corpus)}-{key}"
    if (out / "meta.json").is_file():
        return _open(out)

    docs = corpus_mod.load_corpus(corpus, eval_fraction=eval_fraction, text_field=text_field)
    tok = (
        Tokenizer.from_file(Path(tokenizer).expanduser())
        if tokenizer is not None
        else Tokenizer.train((text for _, text in docs.train), vocab_size=vocab_size)
    )
    # Build in a temporary folder and rename it: a crash never leaves a half-prepared cache entry.
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tok.save(tmp / "tokenizer.json")
        train = TokenShards.build(docs.train, tok, tmp, "train")
        evals = TokenShards.build(docs.eval, tok, tmp, "eval")
        meta = {
            "corpus": corpus,
            "tokenizer": tokenizer,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "eval_fraction": eval_fraction,
            "text_field": text_field,
            "splits": {
                name: {"docs": s.num_docs, "tokens": s.num_tokens}
                for name, s in (("train", train), ("eval", evals))
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if not (out / "meta.json").is_file():  # else a concurrent call finished first: keep its result
            shutil.rmtree(out, ignore_errors=True)  # an incomplete entry from an older crash
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(out)
