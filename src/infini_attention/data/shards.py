"""Tokenised documents in one memory-mapped file per split, with document boundaries.

``out_dir/{split}.bin`` holds every document's tokens back to back (each followed by the eos token
when the tokenizer has one), as uint16 when the vocabulary fits, else uint32. ``out_dir/{split}.json``
records the dtype, vocabulary size and, per document, its name, start offset, length in tokens and
length in characters. Both files are written to a temporary name and renamed into place, so a crash
never leaves a half-written split that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

FORMAT = 1


class _Encoder(Protocol):
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _replace_atomically(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class TokenShards:
    """A read-only view of one split: ``doc(i)`` is a 1-D array of the i-th document's tokens."""

    def __init__(self, out_dir: str | Path, split: str):
        self.dir, self.split = Path(out_dir), split
        meta_path = self.dir / f"{split}.json"
        bin_path = self.dir / f"{split}.bin"
        if not meta_path.is_file() or not bin_path.is_file():
            raise FileNotFoundError(
                f"no '{split}' token shards in {self.dir} (expected {split}.bin and .json)"
            )
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.meta = meta
        self.dtype = np.dtype(meta["dtype"])
        self.vocab_size: int = meta["vocab_size"]
        self.eos_id: int | None = meta.get("eos_id")
        docs = meta["docs"]
        self.names: list[str] = [d["name"] for d in docs]
        self.starts = np.array([d["start"] for d in docs], dtype=np.int64)
        self.lengths = np.array([d["length"] for d in docs], dtype=np.int64)
        self.characters = np.array([d["characters"] for d in docs], dtype=np.int64)
        self.num_tokens = int(self.lengths.sum())
        expected = self.num_tokens * self.dtype.itemsize
        if bin_path.stat().st_size != expected:
            raise ValueError(f"{bin_path} has {bin_path.stat().st_size} bytes, its index says {expected}")
        # np.memmap refuses empty files
        self.tokens = (
            np.memmap(bin_path, dtype=self.dtype, mode="r")
            if self.num_tokens
            else np.zeros(0, dtype=self.dtype)
        )

    @property
    def num_docs(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return self.num_docs

    def doc(self, i: int) -> np.ndarray:
        """Tokens of document ``i`` as a read-only view, shape [length_i]."""
        start = int(self.starts[i])
        return self.tokens[start : start + int(self.lengths[i])]

    def __repr__(self) -> str:
        return (
            f"TokenShards({str(self.dir)!r}, {self.split!r}: {self.num_docs} docs, {self.num_tokens} tokens)"
        )

    @classmethod
    def build(
        cls, docs: Iterable[tuple[str, str]], tokenizer: _Encoder, out_dir: str | Path, split: str
    ) -> TokenShards:
        """Tokenise ``(name, text)`` documents into ``out_dir/{split}.bin`` and ``.json``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        dtype = _dtype_for(tokenizer.vocab_size)
        eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
        index, start = [], 0

        def write_bin(tmp: Path) -> None:
            nonlocal start
            with open(tmp, "wb") as f:
                for name, text in docs:
                    ids = np.asarray(tokenizer.encode(text) + eos, dtype=np.int64)
                    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
                        raise ValueError(
                            f"document {name!r}: token id out of range [0, {tokenizer.vocab_size})"
                        )
                    f.write(ids.astype(dtype).tobytes())
                    index.append(
                        {"name": name, "start": start, "length": int(ids.size), "characters": len(text)}
                    )
                    start += int(ids.size)

        def write_meta(tmp: Path) -> None:
            meta = {
                "format": FORMAT,
                "split": split,
                "dtype": dtype.name,
                "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id,
                "num_tokens": start,
                "docs": index,
            }
            tmp.write_text(json.dumps(meta, indent=1))

        # .bin first: the .json, written last, marks the split as complete
        _replace_atomically(out_dir / f"{split}.bin", write_bin)
        _replace_atomically(out_dir / f"{split}.json", write_meta)
        return cls(out_dir, split)
