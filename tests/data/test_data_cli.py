"""``infini data books|prepare``: output, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infini_attention.cli import main
from infini_attention.data import books

EXCERPT = Path(__file__).resolve().parents[2] / "data" / "excerpt"


def test_prepare_prints_where_and_how_much(tmp_path, capsys):
    args = ["data", "prepare", "--corpus", str(EXCERPT), "--vocab-size", "400", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    prepared = next((tmp_path / "prepared").iterdir())
    assert str(prepared) in out and "tokenizer.json (400 entries)" in out
    assert "train      3 docs" in out and "eval       2 docs" in out
    meta = json.loads((prepared / "meta.json").read_text())
    assert f"{meta['splits']['train']['tokens']:,} tokens" in out
    assert main(args) == 0 and capsys.readouterr().out == out  # cached: same answer


def test_books_prints_the_manifest_totals(tmp_path, capsys, monkeypatch):
    def fake_build(out_dir=None):
        out = Path(out_dir)
        out.mkdir(parents=True)
        totals = {
            "train": {"books": 44, "characters": 1234567, "tokens": 2345},
            "eval": {"books": 6, "characters": 9, "tokens": 8},
        }
        (out / "manifest.json").write_text(json.dumps({"books": [], "totals": totals}))
        return out

    monkeypatch.setattr(books, "build_books", fake_build)
    assert main(["data", "books", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "b") in out and "44 books" in out and "1,234,567 characters" in out


def run(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr of ``infini ARGS``, in-process (argparse errors exit via SystemExit)."""
    try:
        code = main(list(args))
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("data", "prepare", "--corpus", "/no/such/corpus"), "corpus not found: /no/such/corpus"),
        (("data", "prepare", "--corpus", str(EXCERPT), "--vocab-size", "0"), "--vocab-size must be positive"),
        (("data", "prepare", "--corpus", str(EXCERPT), "--tokenizer", "/no/tok.json"), "/no/tok.json"),
        (("data", "prepare", "--corpus", str(EXCERPT / "README.md")), "unsupported corpus file"),
        (("data", "prepare"), "--corpus"),
        (("data",), "required"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, args, message):
    code, err = run(capsys, *args, *(("--out", str(tmp_path)) if "prepare" in args and len(args) > 2 else ()))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("infini"), err
