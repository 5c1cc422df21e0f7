"""Harder passkey haystacks: the paper's prompt with one thing changed at a time.

Every variant keeps the paper's intro and question, and draws the key, its depth and (for ``end``)
its place in the last segment exactly as ``eval.passkey.build_prompt`` does, from the same trial
seed, so a variant's trial ``i`` differs from the plain trial ``i`` only in what is named here:

- ``repeated``: the paper's prompt (the default): the same filler sentences, repeated.
- ``books``: the same lengths and key position, with the filler replaced by real book text: the
  books corpus's held-out books (``infini data books``; Austen's six novels), tokenized and joined in
  name order, cycled if a prompt needs more (the held-out part is 1.63M tokens with the
  passkey model's tokenizer). The tokens before the key are the text's first ``x * len(FILLER)``
  tokens, those after it the next ``y * len(FILLER_AFTER)``, so every trial of a cell reads the
  same text from its start (and the cell's filler is streamed once). The cuts fall between tokens,
  not sentences.
- ``two-keys``: a second sentence with another 5-digit number, ``DISTRACTOR``, at its own uniform
  depth in the filler (before or after the key; for ``end`` always before, so that the key stays
  in the question's segment). The question still asks for the pass key; each trial records the
  distractor and whether the model answered it.
- ``rephrased``: the key sentence worded as it never was in training (``REPHRASED_KEY``), the
  question unchanged.
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np

from .passkey import KEY_SENTENCE, PasskeyParts, PasskeyPrompt, build_prompt

HAYSTACKS = ("repeated", "books", "two-keys", "rephrased")
DISTRACTOR = " The door code is {key}. Remember it. {key} is the door code."
REPHRASED_KEY = " Note that the pass key is {key}; keep it in mind."


def haystack_parts(tokenizer, haystack: str) -> PasskeyParts:
    """The prompt pieces for ``haystack`` (only ``rephrased`` changes them: its key sentence)."""
    check_haystack(haystack)
    return PasskeyParts.from_tokenizer(tokenizer, REPHRASED_KEY if haystack == "rephrased" else KEY_SENTENCE)


def check_haystack(haystack: str) -> None:
    if haystack not in HAYSTACKS:
        raise ValueError(f"haystack must be one of {', '.join(HAYSTACKS)}, got {haystack!r}")


def book_ids(tokenizer, cache_dir=None) -> np.ndarray:
    """The held-out books of the books corpus as one int64 token array (blank line between books)."""
    from ..data.corpus import load_corpus

    docs = sorted(load_corpus("books", cache_dir=cache_dir).eval)
    ids = [
        np.asarray(tokenizer.encode(("\n\n" if i else "") + text), dtype=np.int64)
        for i, (_, text) in enumerate(docs)
    ]
    out = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    if len(out) == 0:
        raise ValueError("the books corpus has no held-out text")
    return out


def haystack_prompt(
    parts: PasskeyParts,
    haystack: str,
    length: int,
    position: str,
    key: str,
    segment_len: int,
    rng: random.Random | None = None,
    *,
    books: np.ndarray | None = None,
) -> PasskeyPrompt:
    """The ``haystack`` variant of ``build_prompt(parts, length, position, key, segment_len, rng)``
    (``parts`` from ``haystack_parts``; ``books`` the token array for ``books``)."""
    check_haystack(haystack)
    if haystack == "two-keys":
        return _two_keys(parts, length, position, key, segment_len, rng)
    prompt = build_prompt(parts, length, position, key, segment_len, rng)
    if haystack != "books":
        return prompt
    if books is None or len(books) == 0:
        raise ValueError("the books haystack needs the book text's token ids (haystack.book_ids)")
    (intro, _), (filler, x), key_run, (filler_after, y), question = prompt.runs
    before, after = x * len(filler), y * len(filler_after)
    text = np.asarray(books, dtype=np.int64)
    if len(text) < before + after:  # cycled (a copy); otherwise views, shared by every trial
        text = np.resize(text, before + after)
    text = text[: before + after]
    runs = ((intro, 1), (text[:before], 1), key_run, (text[before:], 1), question)
    return replace(prompt, runs=runs)


def _two_keys(
    parts: PasskeyParts, length: int, position: str, key: str, segment_len: int, rng: random.Random | None
) -> PasskeyPrompt:
    rng = rng or random.Random(f"two-keys-{length}-{position}-{key}")
    other = key
    while other == key:
        other = str(rng.randint(10000, 99999))
    distractor = tuple(parts.tokenizer.encode(DISTRACTOR.format(key=other)))
    # the plain prompt, shorter by the distractor, so that the whole stays within ``length``
    prompt = build_prompt(parts, length - len(distractor), position, key, segment_len, rng)
    (intro, _), (filler, x), key_run, (filler_after, y), question = prompt.runs
    if position != "end":
        j = round(rng.random() * (x + y))  # whole filler blocks before the distractor
        return _with_distractor(prompt, distractor, other, j)
    # "end": the distractor before the key; then, should the longer prompt have moved the key out of
    # the question's segment, filler blocks come out (after the key first) until it is back in. (When
    # key sentence and question are longer than a segment, nothing can; build_prompt's y = 0 case.)
    j = round(rng.random() * x)
    out = _with_distractor(prompt, distractor, other, j)
    room = len(key_run[0]) + len(question[0]) <= segment_len  # key sentence + question fit one segment
    while room and not _in_last_segment(out, segment_len) and x + y > 0:
        if y > 0:
            y -= 1
        else:
            x, j = x - 1, min(j, x - 1)
        prompt = replace(
            prompt, x=x, y=y, runs=((intro, 1), (filler, x), key_run, (filler_after, y), question)
        )
        out = _with_distractor(prompt, distractor, other, j)
    return out


def _in_last_segment(prompt: PasskeyPrompt, segment_len: int) -> bool:
    return prompt.key_start >= ((len(prompt) - 1) // segment_len) * segment_len


def _with_distractor(prompt: PasskeyPrompt, distractor: tuple[int, ...], other: str, j: int) -> PasskeyPrompt:
    """``prompt`` (the paper's runs) with the distractor sentence after ``j`` of its filler blocks."""
    (intro, _), (filler, x), key_run, (filler_after, y), question = prompt.runs
    if j <= x:  # before the key
        runs = (
            (intro, 1),
            (filler, j),
            (distractor, 1),
            (filler, x - j),
            key_run,
            (filler_after, y),
            question,
        )
        return replace(prompt, runs=runs, key_run=4, distractor=other)
    j -= x
    runs = (
        (intro, 1),
        (filler, x),
        key_run,
        (filler_after, j),
        (distractor, 1),
        (filler_after, y - j),
        question,
    )
    return replace(prompt, runs=runs, key_run=2, distractor=other)
