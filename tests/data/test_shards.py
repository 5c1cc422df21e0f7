"""Token shards: build, reopen memory-mapped, document boundaries and dtypes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infini_attention.data.shards import TokenShards
from infini_attention.data.tokenizer import Tokenizer

DOCS = [("a", "first document\n"), ("b", ""), ("c", "the third one, a bit longer " * 20)]


class CharTokenizer:
    """One token per character code (offset by 1 so 0 stays free), eos = 1 + max char."""

    def __init__(self, vocab_size: int = 200, eos: bool = True):
        self.vocab_size = vocab_size
        self.eos_id = vocab_size - 1 if eos else None

    def encode(self, text: str) -> list[int]:
        return [ord(c) % (self.vocab_size - 2) + 1 for c in text]


@pytest.mark.parametrize("eos", [True, False])
def test_build_and_open_round_trip(tmp_path, eos):
    tok = CharTokenizer(eos=eos)
    built = TokenShards.build(iter(DOCS), tok, tmp_path, "train")
    opened = TokenShards(tmp_path, "train")
    tail = [tok.eos_id] if eos else []
    for shards in (built, opened):
        assert shards.num_docs == len(shards) == 3
        assert shards.names == ["a", "b", "c"]
        assert shards.dtype == np.uint16
        for i, (_, text) in enumerate(DOCS):
            assert shards.doc(i).tolist() == tok.encode(text) + tail
        assert shards.num_tokens == sum(len(t) + len(tail) for _, t in DOCS)
    meta = json.loads((tmp_path / "train.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    assert [d["characters"] for d in meta["docs"]] == [len(t) for _, t in DOCS]
    assert [d["start"] for d in meta["docs"]] == [0, *np.cumsum([d["length"] for d in meta["docs"]])[:-1]]
    # written atomically: no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin", "train.json"]


def test_doc_is_a_read_only_view(tmp_path):
    shards = TokenShards.build(DOCS, CharTokenizer(), tmp_path, "eval")
    doc = shards.doc(2)
    assert isinstance(shards.tokens, np.memmap) and np.shares_memory(doc, shards.tokens)
    with pytest.raises(ValueError):
        doc[0] = 5


def test_large_vocabulary_uses_uint32(tmp_path):
    tok = CharTokenizer(vocab_size=70_000)
    tok.encode = lambda text: [65_000 + len(text)]
    shards = TokenShards.build(DOCS, tok, tmp_path, "train")
    assert shards.dtype == np.uint32
    assert shards.doc(0).tolist() == [65_000 + len(DOCS[0][1]), 69_999]


def test_real_tokenizer_decodes_back(tmp_path):
    tok = Tokenizer.train([t for _, t in DOCS], vocab_size=280)
    shards = TokenShards.build(DOCS, tok, tmp_path, "train")
    for i, (_, text) in enumerate(DOCS):
        ids = shards.doc(i).tolist()
        assert ids[-1] == tok.eos_id
        assert tok.decode(ids[:-1]) == text


def test_empty_split_and_bad_inputs(tmp_path):
    empty = TokenShards.build([], CharTokenizer(), tmp_path, "train")
    assert (empty.num_docs, empty.num_tokens) == (0, 0)
    with pytest.raises(FileNotFoundError, match="eval"):
        TokenShards(tmp_path, "eval")
    tok = CharTokenizer()
    tok.encode = lambda text: [500]
    with pytest.raises(ValueError, match="out of range"):
        TokenShards.build(DOCS, tok, tmp_path / "x", "train")
    TokenShards.build(DOCS, CharTokenizer(), tmp_path, "short")
    with open(tmp_path / "short.bin", "ab") as f:  # a truncated/garbled file is caught on open
        f.write(b"\0\0")
    with pytest.raises(ValueError, match="short.bin"):
        TokenShards(tmp_path, "short")
