"""prepare_data: tokenizer + shards in a cache folder keyed by its inputs; reused on a second call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infini_attention.data import books
from infini_attention.data.packing import SequenceSampler
from infini_attention.data.prepare import prepare_data
from infini_attention.data.tokenizer import Tokenizer

EXCERPT = Path(__file__).resolve().parents[2] / "data" / "excerpt"
VOCAB = 300  # small vocabularies train in milliseconds


def make_folder(root: Path) -> Path:
    for split, names in (("train", ["one", "two", "three"]), ("eval", ["held"])):
        (root / split).mkdir(parents=True)
        for name in names:
            (root / split / f"{name}.txt").write_text(f"The {name} document, with its words.\n" * 20)
    return root


def test_folder_corpus_and_cache_reuse(tmp_path, monkeypatch):
    corpus = str(make_folder(tmp_path / "corpus"))
    data = prepare_data(corpus, vocab_size=VOCAB, cache_dir=tmp_path / "cache")
    assert data.dir.parent == tmp_path / "cache" / "prepared" and data.dir.name.startswith("corpus-")
    assert sorted(p.name for p in data.dir.iterdir()) == [
        "eval.bin", "eval.json", "meta.json", "tokenizer.json", "train.bin", "train.json",
    ]  # fmt: skip
    assert 257 < data.tokenizer.vocab_size <= VOCAB  # BPE stops early when no pair is left to merge
    assert data.train.names == ["one", "three", "two"] and data.eval.names == ["held"]
    text = (tmp_path / "corpus" / "train" / "one.txt").read_text()
    assert data.train.doc(0).tolist() == data.tokenizer.encode(text) + [data.tokenizer.eos_id]
    meta = json.loads((data.dir / "meta.json").read_text())
    assert meta["splits"]["train"] == {"docs": 3, "tokens": data.train.num_tokens}

    # the second call reuses the folder: no tokenizer is trained, nothing is rewritten
    monkeypatch.setattr(Tokenizer, "train", classmethod(lambda *a, **k: pytest.fail("retrained")))
    stamp = (data.dir / "train.bin").stat().st_mtime_ns
    again = prepare_data(corpus, vocab_size=VOCAB, cache_dir=tmp_path / "cache")
    assert again.dir == data.dir and (again.dir / "train.bin").stat().st_mtime_ns == stamp
    assert again.train.num_tokens == data.train.num_tokens
    assert not [p for p in (tmp_path / "cache" / "prepared").iterdir() if p.name.startswith(".")]


def test_cache_key_follows_the_inputs(tmp_path):
    corpus = str(make_folder(tmp_path / "corpus"))
    cache = tmp_path / "cache"
    base = prepare_data(corpus, vocab_size=VOCAB, cache_dir=cache).dir
    assert prepare_data(corpus, vocab_size=VOCAB + 20, cache_dir=cache).dir != base
    assert prepare_data(corpus, vocab_size=VOCAB, eval_fraction=0.5, cache_dir=cache).dir != base
    (tmp_path / "corpus" / "eval" / "held.txt").write_text("A changed held-out document.\n")
    changed = prepare_data(corpus, vocab_size=VOCAB, cache_dir=cache)
    assert changed.dir != base and changed.eval.num_tokens < 40


def test_jsonl_corpus(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"Document number {i}. " * (i + 1)}) + "\n" for i in range(10))
    )
    data = prepare_data(str(path), vocab_size=VOCAB, cache_dir=tmp_path / "cache", eval_fraction=0.2)
    assert (data.train.num_docs, data.eval.num_docs) == (8, 2)
    assert data.tokenizer.decode(data.eval.doc(1).tolist()[:-1]) == "Document number 9. " * 10
    assert (
        prepare_data(str(path), vocab_size=VOCAB, cache_dir=tmp_path / "cache", eval_fraction=0.2).dir
        == data.dir
    )


def test_given_tokenizer_is_used_as_is(tmp_path):
    corpus = str(make_folder(tmp_path / "corpus"))
    tok = Tokenizer.train(["some other text entirely, for a tokenizer"], vocab_size=280)
    tok.save(tmp_path / "tok.json")
    data = prepare_data(corpus, tokenizer=str(tmp_path / "tok.json"), cache_dir=tmp_path / "cache")
    assert data.tokenizer.to_str() == tok.to_str()
    assert data.train.vocab_size == 280
    with pytest.raises(FileNotFoundError, match="nope.json"):
        prepare_data(corpus, tokenizer=str(tmp_path / "nope.json"), cache_dir=tmp_path / "cache")


def test_books_uses_the_built_corpus(tmp_path, monkeypatch):
    built = []

    def fake_build(out_dir=None):
        built.append(out_dir)
        return make_folder(out_dir) if not out_dir.exists() else out_dir

    monkeypatch.setattr(books, "build_books", fake_build)
    monkeypatch.setenv("INFINI_CACHE", str(tmp_path / "cache"))
    data = prepare_data("books", vocab_size=VOCAB)
    assert built == [tmp_path / "cache" / "books"]
    assert data.dir.name.startswith("books-") and data.eval.names == ["held"]
    assert prepare_data("books", vocab_size=VOCAB).dir == data.dir


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no/such/folder"):
        prepare_data(str(tmp_path / "no" / "such" / "folder"), cache_dir=tmp_path)
    (tmp_path / "corpus.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="unsupported corpus file"):
        prepare_data(str(tmp_path / "corpus.parquet"), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="eval_fraction"):
        prepare_data(str(tmp_path), eval_fraction=0, cache_dir=tmp_path)
    corpus = str(make_folder(tmp_path / "corpus"))
    with pytest.raises(ValueError, match="vocab_size"):
        prepare_data(corpus, vocab_size=10, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "prepared").exists() or not any(
        (tmp_path / "cache" / "prepared").iterdir()
    )


def test_committed_excerpt(tmp_path):
    """The ~200 KB public-domain excerpt: 3 training books, 2 held-out Austen novels, packable."""
    sizes = {p.relative_to(EXCERPT).as_posix(): p.stat().st_size for p in EXCERPT.rglob("*.txt")}
    assert len(sizes) == 5 and 150_000 < sum(sizes.values()) < 250_000
    assert all(name.startswith("eval/austen-") for name in sizes if name.startswith("eval/"))
    data = prepare_data(str(EXCERPT), vocab_size=512, cache_dir=tmp_path)
    assert (data.train.num_docs, data.eval.num_docs) == (3, 2)
    assert (
        data.tokenizer.decode(data.eval.doc(0).tolist()[:-1])
        == (EXCERPT / "eval" / "austen-emma.txt").read_text()
    )
    batch = SequenceSampler(data.train, seq_len=256, segment_len=64, batch_size=4, seed=0).next_batch()
    assert batch.input_ids.shape == (4, 256) and batch.doc_start[:, 0].all()
