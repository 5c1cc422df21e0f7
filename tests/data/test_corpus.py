"""Corpus forms: folder with train/eval, flat folder, .jsonl, datasets name; and bad inputs."""

from __future__ import annotations

import json
import sys
import types

import pytest

from infini_attention.data.corpus import corpus_kind, identity, load_corpus


def write_docs(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.txt").write_text(f"text of {name}\n", encoding="utf-8")


def test_folder_with_train_and_eval(tmp_path):
    write_docs(tmp_path / "train", ["b", "a"])
    write_docs(tmp_path / "train" / "sub", ["c"])
    write_docs(tmp_path / "eval", ["z"])
    (tmp_path / "notes.md").write_text("ignored")
    c = load_corpus(str(tmp_path))
    assert c.train == [("a", "text of a\n"), ("b", "text of b\n"), ("sub/c", "text of c\n")]
    assert c.eval == [("z", "text of z\n")]


@pytest.mark.parametrize(
    ("n", "fraction", "n_eval"), [(2, 0.05, 1), (10, 0.05, 1), (40, 0.05, 2), (10, 0.5, 5)]
)
def test_flat_folder_holds_out_the_last_documents(tmp_path, n, fraction, n_eval):
    names = [f"doc{i:02d}" for i in range(n)]
    write_docs(tmp_path, names)
    c = load_corpus(str(tmp_path), eval_fraction=fraction)
    assert [d for d, _ in c.eval] == names[n - n_eval :]
    assert [d for d, _ in c.train] == names[: n - n_eval]


def test_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"body": f"doc {i} ünïcode", "id": i} for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    c = load_corpus(str(path), text_field="body", eval_fraction=0.2)
    assert [t for _, t in c.train] == [f"doc {i} ünïcode" for i in range(4)]
    assert c.eval == [("docs-5", "doc 4 ünïcode")]
    with pytest.raises(ValueError, match="docs.jsonl:1: no string field 'text'"):
        load_corpus(str(path))
    path.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="docs.jsonl:2: not valid JSON"):
        load_corpus(str(path))


def test_kinds_and_identity(tmp_path):
    write_docs(tmp_path / "f", ["a", "b"])
    assert corpus_kind("books") == "books"
    assert corpus_kind(str(tmp_path / "f")) == "folder"
    assert corpus_kind("wikitext:wikitext-2-raw-v1") == "datasets"
    assert corpus_kind("HuggingFaceFW/fineweb-edu:sample-10BT") == "datasets"
    for missing in ("/abs/folder", "a/b/c", "./rel", "~/x", "book.txt", "set.jsonl", "x y"):
        with pytest.raises(FileNotFoundError, match="corpus not found"):
            corpus_kind(missing)
    before = identity(str(tmp_path / "f"))
    assert [f[0] for f in before["files"]] == ["a.txt", "b.txt"]
    (tmp_path / "f" / "a.txt").write_text("changed, and longer than before\n")
    assert identity(str(tmp_path / "f")) != before


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/corpus"):
        load_corpus(str(tmp_path / "nowhere" / "corpus"))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_corpus("missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported corpus file"):
        load_corpus(str(tmp_path / "data.csv"))
    write_docs(tmp_path / "one", ["only"])
    with pytest.raises(ValueError, match="at least 2"):
        load_corpus(str(tmp_path / "one"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="0 document"):
        load_corpus(str(tmp_path / "empty"))
    write_docs(tmp_path / "split" / "train", ["a"])
    (tmp_path / "split" / "eval").mkdir()
    with pytest.raises(ValueError, match="no .txt files in .*eval"):
        load_corpus(str(tmp_path / "split"))
    with pytest.raises(ValueError, match="eval_fraction"):
        load_corpus(str(tmp_path / "split"), eval_fraction=1.0)


def test_datasets_name_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(
        ValueError, match="'some-dataset' is not a file or folder, and the 'datasets' package"
    ):
        load_corpus("some-dataset")


class FakeSplit:
    def __init__(self, texts):
        self.column_names = ["text"]
        self._texts = texts

    def __getitem__(self, field):
        return self._texts


def test_datasets_name_with_a_fake_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        if name == "broken":
            raise ConnectionError("offline")
        if name == "trainonly":
            return {"train": FakeSplit(["a", "", "b", "c"])}
        return {"train": FakeSplit(["a", "b"]), "validation": FakeSplit(["v"]), "test": FakeSplit(["t"])}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    c = load_corpus("org/set:cfg")
    assert calls[-1] == ("org/set", "cfg")
    assert c.train == [("train-0", "a"), ("train-1", "b")] and c.eval == [("validation-0", "v")]
    c = load_corpus("trainonly")
    assert [t for _, t in c.train] == ["a", "b"] and [t for _, t in c.eval] == ["c"]
    with pytest.raises(
        ValueError, match="'broken' is not a file or folder, and could not be loaded as a data set.*offline"
    ):
        load_corpus("broken")
    with pytest.raises(ValueError, match="no field 'body'"):
        load_corpus("org/set", text_field="body")
