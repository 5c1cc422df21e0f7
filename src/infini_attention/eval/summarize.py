"""Abstractive summarisation scored with ROUGE (the paper's BookSum evaluation, Table 4 [P §4.3]).

Each document is streamed through the model segment by segment (bounded memory at any length), then
an instruction suffix, and the summary is decoded after it. Predictions are scored against the
reference with ROUGE-1/2/L/Lsum F-measures (``rouge-score``, Porter stemming) and an ``overall``
score, the geometric mean of the mean ROUGE-1, -2 and -L.

The ``lead`` baseline needs no model: the document's first sentences, about as many words as a
typical reference, scored the same way.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.summaries import SummaryDoc

# Appended after the (possibly truncated) document tokens. Fine-tuning must build its examples with
# this same suffix (via ``build_prompt``) so that the model learns to answer exactly this cue.
PROMPT_SUFFIX = "\n\nAbstract:\n"

# The paper's decoding for BookSum: "temperature 0.5, top_p 0.95, and 1024 decoding steps"
# (shared/docs/paper.md §2.3, quoting [P §4.3]). 1024 steps fit book summaries; ACL abstracts have
# a median of ~120 words (~160 tokens, at most ~400 words), so 256 new tokens is the default here.
DEFAULT_TEMPERATURE = 0.5
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_NEW_TOKENS = 256

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? (plus any closing quotes/brackets), followed by whitespace and then an
# upper-case letter or digit (optionally after an opening quote/bracket).
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
# ... unless the period belongs to one of these abbreviations (lower-cased) or to an initial ("J.").
_ABBREVIATIONS = frozenset(
    ["e.g.", "i.e.", "al.", "cf.", "vs.", "fig.", "figs.", "eq.", "eqs.", "sec.", "sect.", "tab."]
    + ["no.", "pp.", "dr.", "mr.", "mrs.", "ms.", "prof.", "st.", "approx.", "resp.", "ca.", "ch."]
)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` by a fixed rule (no NLTK model: its data cannot be downloaded offline).

    Blank lines always end a sentence (paragraphs); a single newline is a space (hard-wrapped text).
    Within a paragraph a sentence ends at ``.``, ``!`` or ``?`` (with closing quotes or brackets)
    followed by whitespace and an upper-case letter, a digit or an opening quote/bracket, except
    after a listed abbreviation ("e.g.", "et al.", "Fig.", ...) or a one-letter initial ("J.").
    """
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            candidate = paragraph[start : match.end()].strip()
            last = candidate.split()[-1].lstrip("\"'([\u201c\u2018")
            if last.lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Z]\.", last):
                continue
            sentences.append(candidate)
            start = match.end()
        if paragraph[start:].strip():
            sentences.append(paragraph[start:].strip())
    return sentences


# A document with a title (ACLSum papers have one) is framed by it: the title opens the document and
# is repeated in the cue, so that a model shown many papers in one stream (``haystack_prompt``, the
# long-input imitation) is told which one to summarise. The cue still ends with "Abstract:\n".
TITLE_HEADER = "Title: {title}\n\n"
TITLED_SUFFIX = "\n\nTitle: {title}\nAbstract:\n"
# between the papers of a haystack
PAPER_SEPARATOR = "\n\n"


def prompt_frame(title: str = "") -> tuple[str, str]:
    """``(header, suffix)``: the text before and after a document's tokens (see ``TITLE_HEADER``)."""
    if not title:
        return "", PROMPT_SUFFIX
    return TITLE_HEADER.format(title=title), TITLED_SUFFIX.format(title=title)


def encode_text(tokenizer, text: str) -> list[int]:
    """``tokenizer.encode(text)`` as a list, and ``[]`` for empty text (no special tokens either way)."""
    return list(tokenizer.encode(text)) if text else []


def prompt_ids(
    tokenizer, document: str, max_input_tokens: int | None = None, title: str = ""
) -> tuple[list[int], int, bool]:
    """``(prompt ids, document tokens before truncation, truncated)``; see ``build_prompt``."""
    header, suffix = prompt_frame(title)
    doc = encode_text(tokenizer, document)
    kept = doc if max_input_tokens is None else doc[:max_input_tokens]
    prompt = encode_text(tokenizer, header) + kept + encode_text(tokenizer, suffix)
    return prompt, len(doc), len(kept) < len(doc)


def build_prompt(tokenizer, document: str, max_input_tokens: int | None = None, title: str = "") -> list[int]:
    """Header (when titled), the document's first ``max_input_tokens`` tokens (all when None), suffix.

    The parts are encoded separately so that truncation never cuts the header or the suffix and
    the suffix has the same ids in every prompt; ``max_input_tokens`` counts document tokens only.
    Keeping the beginning follows the paper's input-length sweep (Fig. 4: the first 16K ... 500K
    tokens of each book).
    """
    return prompt_ids(tokenizer, document, max_input_tokens, title)[0]


@dataclass(frozen=True)
class Haystack:
    """A long-input prompt: the target paper among others, then the target's cue."""

    ids: list[int]
    target_start: int  # token offset of the target's header in ``ids``
    target_tokens: int  # the target's header + (kept) document tokens
    distractors: int  # whole or partial other papers in the prompt
    truncated: bool  # the target's document was cut to ``max_input_tokens``


def haystack_prompt(
    tokenizer,
    target: SummaryDoc,
    others: list[SummaryDoc],
    total_tokens: int,
    depth: float,
    seed: int = 0,
    max_input_tokens: int | None = None,
    cache: dict | None = None,
) -> Haystack:
    """The long-input imitation of the paper's 500K-token setting: ``target`` (header + document)
    placed among ``others`` (each header + document, ``PAPER_SEPARATOR`` between papers) so that the
    prompt, cue included, is exactly ``total_tokens`` long, then the target's titled cue.

    ``depth`` in [0, 1] places the target: it starts at the paper boundary nearest to ``depth`` of
    the filler (0: first, 1: last, right before the cue). The other papers come in an order drawn
    from ``(seed, target.id)``, repeated if they run out; the last one is cut to hit the length.
    ``cache`` (id -> header + document ids) saves re-encoding the same papers for every target.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    pool = [doc for doc in others if doc.id != target.id]
    if not pool:
        raise ValueError("no other documents to build the haystack from")
    cache = {} if cache is None else cache

    def block(doc: SummaryDoc) -> list[int]:
        if doc.id not in cache:
            head = encode_text(tokenizer, prompt_frame(doc.title)[0])
            cache[doc.id] = head + encode_text(tokenizer, doc.document)
        return cache[doc.id]

    header_text, suffix_text = prompt_frame(target.title)
    document = encode_text(tokenizer, target.document)
    body = document[:max_input_tokens]
    target_ids = encode_text(tokenizer, header_text) + body
    suffix = encode_text(tokenizer, suffix_text)
    sep = encode_text(tokenizer, PAPER_SEPARATOR)
    budget = total_tokens - len(target_ids) - len(suffix)  # other papers, one separator each
    if budget <= len(sep):
        raise ValueError(
            f"a {total_tokens:,}-token haystack cannot hold document {target.id!r} "
            f"({len(target_ids) + len(suffix):,} tokens with its cue) and another paper"
        )
    rng = random.Random(sample_seed(seed, target.id))
    filler: list[list[int]] = []
    used = 0
    while used < budget:
        order = list(pool)
        rng.shuffle(order)
        for doc in order:
            room = budget - used - len(sep)
            if room <= 0:
                break
            piece = block(doc)[:room]
            filler.append(piece)
            used += len(piece) + len(sep)
    # the target starts at the boundary nearest to depth * budget
    bounds = [0]
    for piece in filler:
        bounds.append(bounds[-1] + len(piece) + len(sep))
    k = min(range(len(bounds)), key=lambda i: abs(bounds[i] - depth * budget))
    ids: list[int] = []
    for i, paper in enumerate(filler[:k] + [target_ids] + filler[k:]):
        ids += sep + paper if i else paper
    ids += suffix
    return Haystack(ids, bounds[k], len(target_ids), len(filler), len(body) < len(document))


def lead_words(references: Iterable[str]) -> int:
    """The lead baseline's length: the median word count of the references (whitespace words)."""
    counts = [len(r.split()) for r in references]
    if not counts:
        raise ValueError("no references to size the lead baseline with")
    return max(1, round(statistics.median(counts)))


def lead_summary(document: str, n_words: int) -> str:
    """The fewest whole first sentences of ``document`` (``split_sentences``) that reach ``n_words``
    words (all of them if the document is shorter), one sentence a line.

    Sizing by the median reference length, one number for the whole set, is how lead-k baselines
    are usually matched to a data set (lead-3 for news); no single reference's length is used.
    """
    picked, words = [], 0
    for sentence in split_sentences(document):
        if words >= n_words:
            break
        picked.append(sentence)
        words += len(sentence.split())
    return "\n".join(picked)


_SCORER = None


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE F-measures in [0, 1] for ``ROUGE_TYPES`` (stemmed; rougeLsum over ``split_sentences``)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    # rougeLsum reads sentences from newlines; the other types treat them as spaces
    target = "\n".join(split_sentences(reference))
    pred = "\n".join(split_sentences(prediction))
    scores = _SCORER.score(target, pred)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def overall_score(rouge1: float, rouge2: float, rougeL: float) -> float:
    """Geometric mean of ROUGE-1, -2 and -L.

    [P] does not define "Overall"; shared/docs/paper.md §2.3 checks that Table 4's Overall equals
    the geometric mean of R-1, R-2 and R-L in every row (e.g. (40.0·8.8·17.9)^(1/3) = 18.47), so it
    is taken of the aggregate (mean) scores, not averaged over documents.
    """
    return (rouge1 * rouge2 * rougeL) ** (1 / 3)


def aggregate(records: list[dict]) -> dict:
    """Mean of each ROUGE type over documents, ``overall`` and the number of ``documents``."""
    if not records:
        raise ValueError("no documents to aggregate")
    out = {name: sum(r[name] for r in records) / len(records) for name in ROUGE_TYPES}
    out["overall"] = overall_score(out["rouge1"], out["rouge2"], out["rougeL"])
    out["documents"] = len(records)
    return out


def control_aggregate(records: list[dict]) -> dict | None:
    """``aggregate`` of each prediction scored against the *next* document's reference (cyclically).

    A control for specificity: generic, abstract-shaped text scores about as well against another
    paper's abstract as against its own, a summary of the document does not. None with fewer than
    two documents.
    """
    if len(records) < 2:
        return None
    refs = [r["reference"] for r in records]
    shifted = [rouge_scores(r["prediction"], refs[(i + 1) % len(refs)]) for i, r in enumerate(records)]
    return aggregate(shifted)


def sample_seed(seed: int, doc_id: str) -> int:
    """A per-document sampling seed: the same document gets the same draws whatever ``--limit``."""
    return zlib.crc32(f"{seed}:{doc_id}".encode())


def generate_summary(
    model,
    tokenizer,
    prompt: list[int],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    generator: torch.Generator | None = None,
) -> str:
    """Stream ``prompt`` through ``model`` and decode until the tokenizer's EOS or ``max_new_tokens``."""
    from ..generation import stream_generate

    eos = getattr(tokenizer, "eos_id", None)
    tokens = []
    steps = stream_generate(
        model, torch.tensor(prompt), max_new_tokens, temperature, top_p, eos_id=eos, generator=generator
    )
    for token in steps:
        if token == eos:
            break
        tokens.append(token)
    return tokenizer.decode(tokens).strip()


def evaluate_summaries(
    docs: list[SummaryDoc],
    predict: Callable[[SummaryDoc], tuple[str, int | None, bool]],
    progress: Callable[[int, dict], None] | None = None,
) -> dict:
    """Score ``predict(doc) -> (prediction, input tokens, truncated)`` on every document.

    ``input tokens`` is None when no model reads the document (the lead baseline); a record's
    ``seconds`` times ``predict`` alone (streaming the prompt and decoding), not the scoring.
    Returns ``{"aggregate": ..., "control": control_aggregate(...), "documents": [...]}``;
    ``progress(index, record)`` after each one.
    """
    records = []
    for i, doc in enumerate(docs):
        start = time.perf_counter()
        prediction, input_tokens, truncated = predict(doc)
        seconds = time.perf_counter() - start
        record = {"id": doc.id, "input_tokens": input_tokens, "truncated": bool(truncated)}
        record.update(prediction=prediction, reference=doc.summary, **rouge_scores(prediction, doc.summary))
        record["seconds"] = round(seconds, 3)
        records.append(record)
        if progress is not None:
            progress(i, record)
    return {"aggregate": aggregate(records), "control": control_aggregate(records), "documents": records}


def format_summary_table(results: dict) -> str:
    """The aggregate scores (x100, as the paper prints them) in a short table."""
    agg = results["aggregate"]
    names = ["R-1", "R-2", "R-L", "R-Lsum", "overall"]
    keys = [*ROUGE_TYPES, "overall"]
    head = f"{'documents':>9}  " + "  ".join(f"{n:>7}" for n in names)
    row = f"{agg['documents']:>9}  " + "  ".join(f"{100 * agg[k]:>7.2f}" for k in keys)
    control = results.get("control")
    if control is None:
        return f"{head}\n{row}"
    other = f"{'control':>9}  " + "  ".join(f"{100 * control[k]:>7.2f}" for k in keys)
    note = "(control: each summary scored against the next document's reference)"
    return f"{head}\n{row}\n{other}  {note}"


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON to a temporary file next to ``path``, then rename: readers never see half a file."""
    path = Path(path).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
