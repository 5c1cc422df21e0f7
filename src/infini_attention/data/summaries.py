"""Summarisation data: (document, reference summary) pairs from ACLSum or any ``.jsonl`` file.

ACLSum (PyPI ``aclsum==0.1.2``, Takeshita et al. 2024) ships 250 ACL Anthology papers as package data:
``aclsum/dataset/{train,val,test}.jsonl`` (100/50/100 records: id, title, aspect summaries and the
abstract/introduction/conclusion as pre-tokenised sentences) and ``aclsum/dataset/paper_jsons/<id>.json``
(the S2ORC-style parse: ``abstract`` and ``pdf_parse.body_text[].text``). The package itself imports
``sienna``, which we do not need, so it is installed with ``--no-deps`` and located with
``importlib.util.find_spec`` without being imported.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

ACLSUM_SPLITS = ("train", "val", "test")
ACLSUM_INSTALL = "pip install --no-deps aclsum==0.1.2"


@dataclass(frozen=True)
class SummaryDoc:
    """One document to summarise and its reference summary."""

    id: str
    document: str
    summary: str
    title: str = ""  # when known, the prompt names it (eval.summarize.prompt_frame)


def aclsum_root() -> Path:
    """The ``aclsum/dataset`` folder of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("aclsum")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the aclsum data set is not installed: {ACLSUM_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset"


def load_aclsum(split: str, root: str | Path | None = None) -> list[SummaryDoc]:
    """The ``split`` of ACLSum: document = the paper's body text, summary = its abstract.

    The document is every ``pdf_parse.body_text`` paragraph, joined with blank lines. The abstract is
    parsed apart (``pdf_parse.abstract``), though in 6 of the 250 papers a body paragraph repeats its
    opening words verbatim, as authors sometimes reuse them in the introduction or conclusion.

    The reference is the paper JSON's ``abstract`` string, not the jsonl's ``sentences.abstract``:
    the latter is PTB-tokenised ("workflow .", "( MT )"), i.e. not text a model would write, whereas
    the paper JSON's abstract is plain text from the same parse as the body (same spelling and
    spacing as the input, as a generated abstract would be). Both hold the same characters, spaces
    aside, in 93 of the 100 test papers.

    ``root`` is the ``dataset`` folder (default: the installed package's), so tests can use a fake.
    """
    if split not in ACLSUM_SPLITS:
        raise ValueError(f"unknown aclsum split {split!r} (choose among {', '.join(ACLSUM_SPLITS)})")
    root = aclsum_root() if root is None else Path(root)
    index = root / f"{split}.jsonl"
    if not index.is_file():
        raise ValueError(f"aclsum file missing: {index} (reinstall with {ACLSUM_INSTALL})")
    docs = []
    for line_no, record in _read_jsonl(index):
        doc_id = record.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"{index}:{line_no}: record has no 'id'")
        paper_file = root / "paper_jsons" / f"{doc_id}.json"
        if not paper_file.is_file():
            raise ValueError(f"aclsum paper file missing: {paper_file}")
        paper = _read_json(paper_file)
        abstract = paper.get("abstract")
        body = (paper.get("pdf_parse") or {}).get("body_text")
        if not isinstance(abstract, str) or not abstract.strip():
            raise ValueError(f"{paper_file}: missing field 'abstract'")
        if not isinstance(body, list):
            raise ValueError(f"{paper_file}: missing field 'pdf_parse.body_text'")
        paragraphs = [
            p["text"].strip() for p in body if isinstance(p, dict) and str(p.get("text", "")).strip()
        ]
        if not paragraphs:
            raise ValueError(f"{paper_file}: 'pdf_parse.body_text' has no text")
        title = " ".join(str(record.get("title") or paper.get("title") or "").split())
        docs.append(SummaryDoc(doc_id, "\n\n".join(paragraphs), abstract.strip(), title))
    if not docs:
        raise ValueError(f"the aclsum {split} split is empty: {index}")
    return docs


def load_jsonl(
    path: str | Path, document_field: str = "document", summary_field: str = "summary"
) -> list[SummaryDoc]:
    """Records of a ``.jsonl`` file: one JSON object a line with a document and a summary string.

    ``id`` is the record's ``id`` field when it has one, else its line number, so every
    per-document result can be traced back to its line; an optional ``title`` string is kept
    (the prompt names it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    docs = []
    for line_no, record in _read_jsonl(path):
        fields = {}
        for name in (document_field, summary_field):
            value = record.get(name)
            if not isinstance(value, str) or not value.strip():
                have = ", ".join(sorted(record)) or "none"
                raise ValueError(f"{path}:{line_no}: no text field {name!r} (fields: {have})")
            fields[name] = value.strip()
        doc_id = str(record.get("id", line_no))
        title = record.get("title")
        title = " ".join(title.split()) if isinstance(title, str) else ""
        docs.append(SummaryDoc(doc_id, fields[document_field], fields[summary_field], title))
    if not docs:
        raise ValueError(f"{path} has no records")
    return docs


def _read_jsonl(path: Path):
    """``(line number, record)`` for each non-blank line; a line that is not a JSON object is an error."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield line_no, record


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
