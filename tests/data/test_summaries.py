"""Summarisation data: .jsonl records and the ACLSum layout (a fake one in tmp_path, and the real package)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from infini_attention.data import summaries
from infini_attention.data.summaries import SummaryDoc, load_aclsum, load_jsonl


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_jsonl_records_with_and_without_ids(tmp_path):
    path = tmp_path / "docs.jsonl"
    records = [{"id": "a", "document": " One. ", "summary": "1"}, {"document": "Two.", "summary": "2"}]
    path.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n", encoding="utf-8")
    # ids fall back to the line number (the blank line 2 still counts), text is stripped
    assert load_jsonl(path) == [SummaryDoc("a", "One.", "1"), SummaryDoc("3", "Two.", "2")]


def test_jsonl_custom_fields(tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, [{"article": "Long text.", "highlights": "Short."}])
    assert load_jsonl(path, "article", "highlights") == [SummaryDoc("1", "Long text.", "Short.")]


def test_jsonl_optional_title(tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(
        path,
        [
            {"document": "D.", "summary": "S.", "title": " My\n paper "},
            {"document": "E.", "summary": "T.", "title": 3},
        ],
    )
    docs = load_jsonl(path)
    assert [d.title for d in docs] == ["My paper", ""]  # a non-string title is no title


@pytest.mark.parametrize(
    "records, match",
    [
        ([{"document": "x", "summary": "y"}, {"document": "x"}], r"docs.jsonl:2: no text field 'summary'"),
        ([{"text": "x", "summary": "y"}], r"no text field 'document' \(fields: summary, text\)"),
        ([{"document": "  ", "summary": "y"}], r"no text field 'document'"),
        ([{"document": 3, "summary": "y"}], r"no text field 'document'"),
        ([], r"has no records"),
        ([["document", "summary"]], r"docs.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_jsonl_errors(tmp_path, records, match):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, records)
    with pytest.raises(ValueError, match=match):
        load_jsonl(path)


def test_jsonl_not_json_and_missing_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"document": "x", "summary": "y"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs.jsonl:2: not JSON"):
        load_jsonl(path)
    with pytest.raises(ValueError, match=r"data file not found: .*nowhere.jsonl"):
        load_jsonl(tmp_path / "nowhere.jsonl")


def fake_paper(abstract="Plain abstract, as written.", paragraphs=("First paragraph.", "", "Second one.")):
    body = [{"text": p, "section": "Introduction"} for p in paragraphs]
    return {"paper_id": "x", "abstract": abstract, "pdf_parse": {"abstract": [], "body_text": body}}


@pytest.fixture
def fake_aclsum(tmp_path):
    """The package's ``dataset`` layout: split files of ids, one paper JSON per id."""
    root = tmp_path / "dataset"
    (root / "paper_jsons").mkdir(parents=True)
    # the jsonl's abstract sentences are PTB-tokenised; the loader must not use them
    write_jsonl(
        root / "test.jsonl",
        [
            {
                "id": "P1",
                "title": "A  Title\nOn Two Lines",
                "sentences": {"abstract": ["Plain abstract , as written ."]},
            }
        ],
    )
    write_jsonl(root / "val.jsonl", [])
    (root / "paper_jsons" / "P1.json").write_text(json.dumps(fake_paper()), encoding="utf-8")
    return root


def test_aclsum_document_is_the_body_and_summary_the_abstract(fake_aclsum):
    doc = SummaryDoc(
        "P1", "First paragraph.\n\nSecond one.", "Plain abstract, as written.", "A Title On Two Lines"
    )
    assert load_aclsum("test", root=fake_aclsum) == [doc]  # the title's whitespace collapsed


def test_aclsum_errors(fake_aclsum):
    with pytest.raises(ValueError, match=r"unknown aclsum split 'dev' \(choose among train, val, test\)"):
        load_aclsum("dev", root=fake_aclsum)
    with pytest.raises(ValueError, match=r"aclsum file missing: .*train.jsonl"):
        load_aclsum("train", root=fake_aclsum)
    with pytest.raises(ValueError, match=r"the aclsum val split is empty"):
        load_aclsum("val", root=fake_aclsum)
    paper = fake_aclsum / "paper_jsons" / "P1.json"
    paper.write_text(json.dumps(fake_paper(abstract="")), encoding="utf-8")
    with pytest.raises(ValueError, match=r"P1.json: missing field 'abstract'"):
        load_aclsum("test", root=fake_aclsum)
    paper.write_text(json.dumps({"abstract": "A."}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"P1.json: missing field 'pdf_parse.body_text'"):
        load_aclsum("test", root=fake_aclsum)
    paper.write_text(json.dumps(fake_paper(paragraphs=(" ",))), encoding="utf-8")
    with pytest.raises(ValueError, match=r"'pdf_parse.body_text' has no text"):
        load_aclsum("test", root=fake_aclsum)
    paper.unlink()
    with pytest.raises(ValueError, match=r"aclsum paper file missing: .*P1.json"):
        load_aclsum("test", root=fake_aclsum)


def test_aclsum_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setattr(summaries.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"not installed: pip install --no-deps aclsum==0.1.2"):
        load_aclsum("test")


@pytest.mark.skipif(importlib.util.find_spec("aclsum") is None, reason="aclsum is not installed")
def test_real_aclsum_splits():
    sizes = {split: load_aclsum(split) for split in ("train", "val", "test")}
    assert {split: len(docs) for split, docs in sizes.items()} == {"train": 100, "val": 50, "test": 100}
    ids = [doc.id for docs in sizes.values() for doc in docs]
    assert len(set(ids)) == 250
    first = sizes["test"][0]
    assert first.id == "E09-1056"
    assert first.summary.startswith("Handling terminology is an important matter in a translation workflow.")
    assert first.document.startswith("If machine translation is to meet commercial needs")
    assert "\n\n" in first.document and len(first.document.split()) > 10 * len(first.summary.split())
