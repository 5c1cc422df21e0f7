"""Read a corpus into train and eval documents, each a ``(name, text)`` pair.

A corpus is named by a string:
- ``"books"``: the public-domain books corpus (``books.build_books``), built into the cache;
- a folder of ``.txt`` files: its ``train/`` and ``eval/`` subfolders if it has both, else every
  ``.txt`` under it in sorted order, the last ``eval_fraction`` of them (at least one) held out;
- a ``.jsonl`` file, one JSON object per line with the text under ``text_field`` (same split rule);
- otherwise a Hugging Face ``datasets`` name, ``"name"`` or ``"name:config"`` (needs ``datasets``
  and, usually, the network).
Documents are held in memory: fine for book-sized corpora (the books corpus is about 19 MB).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

Doc = tuple[str, str]
# "name", "org/name" or "org/name:config": a string that is no existing path but looks like this
# is taken for a data set name
_DATASET_NAME = re.compile(r"[\w][\w.-]*(/[\w.-]+)?(:[\w.-]+)?")


def default_cache_dir() -> Path:
    """``$INFINI_CACHE`` if set, else ``~/.cache/infini-attention``."""
    return Path(os.environ.get("INFINI_CACHE") or Path.home() / ".cache" / "infini-attention")


@dataclass
class Corpus:
    train: list[Doc]
    eval: list[Doc]


def corpus_kind(spec: str) -> str:
    """One of ``books``, ``folder``, ``jsonl`` or ``datasets``; errors for missing or unknown paths."""
    if spec == "books":
        return "books"
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file():
        if path.suffix == ".jsonl":
            return "jsonl"
        raise ValueError(
            f"unsupported corpus file {spec} (expected a folder of .txt, a .jsonl file or 'books')"
        )
    if _DATASET_NAME.fullmatch(spec) and path.suffix not in (".jsonl", ".json", ".txt"):
        return "datasets"
    raise FileNotFoundError(f"corpus not found: {spec}")


def identity(spec: str) -> dict:
    """What the corpus's content depends on, for cache keys: file names, sizes and mtimes."""
    kind = corpus_kind(spec)
    if kind in ("books", "datasets"):
        return {"kind": kind, "name": spec}
    path = Path(spec).expanduser().resolve()
    files = sorted(path.rglob("*.txt")) if kind == "folder" else [path]
    stats = [(str(f.relative_to(path)) if kind == "folder" else f.name, f.stat()) for f in files]
    return {
        "kind": kind,
        "path": str(path),
        "files": [(name, st.st_size, st.st_mtime_ns) for name, st in stats],
    }


def load_corpus(
    spec: str, *, eval_fraction: float = 0.05, text_field: str = "text", cache_dir=None
) -> Corpus:
    """Read the corpus named by ``spec`` (see the module docstring)."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    kind = corpus_kind(spec)
    if kind == "books":
        from .books import build_books

        root = build_books(Path(cache_dir or default_cache_dir()) / "books")
        return _read_folder(root, eval_fraction)
    if kind == "folder":
        return _read_folder(Path(spec).expanduser(), eval_fraction)
    if kind == "jsonl":
        return _split(_read_jsonl(Path(spec).expanduser(), text_field), eval_fraction, spec)
    return _read_datasets(spec, eval_fraction, text_field)


def _read_txt(root: Path) -> list[Doc]:
    files = sorted(root.rglob("*.txt"))
    return [(f.relative_to(root).with_suffix("").as_posix(), f.read_text(encoding="utf-8")) for f in files]


def _read_folder(root: Path, eval_fraction: float) -> Corpus:
    if (root / "train").is_dir() and (root / "eval").is_dir():
        corpus = Corpus(_read_txt(root / "train"), _read_txt(root / "eval"))
        for split, docs in (("train", corpus.train), ("eval", corpus.eval)):
            if not docs:
                raise ValueError(f"no .txt files in {root / split}")
        return corpus
    return _split(_read_txt(root), eval_fraction, str(root))


def _read_jsonl(path: Path, text_field: str) -> list[Doc]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(f"{path}:{line_no}: no string field '{text_field}'")
            docs.append((f"{path.stem}-{line_no}", record[text_field]))
    return docs


def _split(docs: list[Doc], eval_fraction: float, where: str) -> Corpus:
    """The last ``eval_fraction`` of the documents (at least one) are the eval split."""
    if len(docs) < 2:
        raise ValueError(
            f"corpus {where} has {len(docs)} document(s); at least 2 are needed (train and eval)"
        )
    n_eval = min(len(docs) - 1, max(1, round(len(docs) * eval_fraction)))
    return Corpus(docs[:-n_eval], docs[-n_eval:])


def _read_datasets(spec: str, eval_fraction: float, text_field: str) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"corpus '{spec}' is not a file or folder, and the 'datasets' package is not installed "
            "to load it as a data set name"
        ) from None
    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None)
    except Exception as err:
        raise ValueError(
            f"corpus '{spec}' is not a file or folder, and could not be loaded as a data set "
            f"({type(err).__name__}: {err})"
        ) from None

    def docs(split: str) -> list[Doc]:
        part = ds[split]
        if text_field not in part.column_names:
            raise ValueError(f"data set '{spec}' has no field '{text_field}' (fields: {part.column_names})")
        return [(f"{split}-{i}", t) for i, t in enumerate(part[text_field]) if t]

    held_out = next((s for s in ("validation", "test", "eval") if s in ds), None)
    if "train" in ds and held_out:
        return Corpus(docs("train"), docs(held_out))
    return _split(docs("train" if "train" in ds else next(iter(ds))), eval_fraction, spec)
