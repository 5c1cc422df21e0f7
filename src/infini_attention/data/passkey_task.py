"""Passkey fine-tuning data (paper section 4.3): short passkey prompts with the answer as the only target.

Each row is the evaluation's prompt template (``eval.passkey``: intro, filler, key sentence, filler,
question) followed by the answer ``" 12345."``, padded on the right to the row length::

    [ intro | filler * x | key sentence | filler * y | question | answer | pad ... ]
                                                        labels: ^^^^^^^ (the answer's tokens only)

so the loss is the cross-entropy of the answer given the prompt, teacher-forced. A row counts as
*retrieved* when every answer token is the argmax: that is exactly "greedy decoding reproduces the
answer", so the training accuracy reads the same way as the evaluation's.

What varies, all drawn from ``random.Random(f"passkey-train-{seed}-{step}")`` (resumable: the state
is the step count; the evaluation's trials use other seeds, so no evaluation prompt is trained on):

- the row length: one per batch, uniform in ``[min_len, seq_len]`` (or, with ``log_uniform``, uniform
  in its logarithm: as many batches of 1K-8K tokens as of 64K-512K) and rounded up to whole
  segments (short batches are cheap; the longest put the key up to ``seq_len / N`` segments away);
- the key: 5 random digits; with ``repeat_keys`` > 0, that share of the digit keys has digits that
  repeat their predecessor (each with probability 1/2, at least one), like 68888 or 22989: keys that
  copy by content alone ("after 8 comes 8") cannot spell, and the ones stage 8 got wrong
  (docs/passkey.md: 73% of keys with adjacent repeats, 100% of keys with five distinct digits);
- the depth: uniform in [0, 1] (share of the filler before the key), so the key sits in any segment,
  the question's own one included;
- with ``cross_boundary`` > 0, that share of rows has the prompt shortened by whole filler blocks
  until a segment boundary falls inside the answer (after 1 to len(answer) - 1 of its tokens). The
  tokens after the boundary are then predicted with the question and the answer's start only in
  the memory: a 5-digit answer crosses a boundary in about 5% of rows otherwise, and at lengths
  like 256K and 1M the evaluation's prompts end just before one (docs/passkey.md);
- with ``book_filler`` > 0, that share of rows has its filler tokens (before and after the key, as
  many as the repeated sentences had) replaced by one stretch of book text: a training document
  drawn in proportion to its length, read from a random offset (cycled when a document is shorter
  than the stretch). The key then has to stand out among prose, which writes many different
  bindings into the memory instead of the same few (the "books" haystack, docs/passkey.md).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from itertools import pairwise

import numpy as np
import torch

from ..eval.passkey import PasskeyParts, PasskeyPrompt
from .packing import IGNORE, PAD_ID, Batch, check_sampler_args, check_sampler_state, stack_rows

ANSWER = " {key}."


def answer_ids(parts: PasskeyParts, key: str) -> tuple[int, ...]:
    """The answer's ids: the key as the model should continue ``... The pass key is``, then a period
    (which ends the number, so the evaluation's 5-digit match stops there)."""
    return tuple(parts.tokenizer.encode(ANSWER.format(key=key)))


def training_prompt(parts: PasskeyParts, length: int, key: str, depth: float) -> PasskeyPrompt:
    """A prompt of at most ``length`` tokens (within one filler block) with the key at ``depth``."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    key_ids = parts.key_ids(key)
    n1, n2 = len(parts.filler), len(parts.filler_after)
    budget = length - len(parts.intro) - len(key_ids) - len(parts.question)
    if budget < 0:
        raise ValueError(f"length {length} is too short for a passkey prompt")
    x = min(round(depth * budget / n1), budget // n1)
    y = (budget - x * n1) // n2
    runs = ((parts.intro, 1), (parts.filler, x), (key_ids, 1), (parts.filler_after, y), (parts.question, 1))
    return PasskeyPrompt(key=key, x=x, y=y, runs=runs)


def crossing_prompt(prompt: PasskeyPrompt, before: int, segment_len: int) -> PasskeyPrompt | None:
    """``prompt`` with the fewest filler blocks removed (depth kept as close as possible) so that
    it ends ``before`` tokens short of a segment boundary: the answer that follows then crosses the
    boundary after ``before`` tokens. None when no such prompt is left (too little filler).

    The search stops after ``2 * segment_len`` blocks rather than trying every block of a long
    haystack: with blocks of equal length the shortenings repeat modulo ``segment_len`` after
    ``segment_len`` of them."""
    (intro, _), (filler, x), key, (filler_after, y), question = prompt.runs
    n1, n2, P = len(filler), len(filler_after), len(prompt)

    def shortened(x_left: int, y_left: int) -> PasskeyPrompt:
        runs = ((intro, 1), (filler, x_left), key, (filler_after, y_left), question)
        return PasskeyPrompt(key=prompt.key, x=x_left, y=y_left, runs=runs)

    for removed in range(min(x + y, 2 * segment_len) + 1):
        fits = [
            shortened(x - dx, y - (removed - dx))
            for dx in range(max(0, removed - y), min(x, removed) + 1)
            if (P - dx * n1 - (removed - dx) * n2 + before) % segment_len == 0
        ]
        if fits:
            return min(fits, key=lambda p: abs(p.depth - prompt.depth))
    return None


def book_filler_prompt(prompt: PasskeyPrompt, text: np.ndarray) -> PasskeyPrompt:
    """``prompt`` (``training_prompt``'s runs) with its filler tokens replaced by ``text``: the first
    ``x * len(filler)`` tokens before the key, the next ``y * len(filler_after)`` after it, so the
    length, the key's place and the question's are unchanged. ``text`` must hold enough tokens."""
    (intro, _), (filler, x), key_run, (filler_after, y), question = prompt.runs
    before, after = x * len(filler), y * len(filler_after)
    if len(text) < before + after:
        raise ValueError(f"book filler needs {before + after} tokens, got {len(text)}")
    text = np.asarray(text[: before + after], dtype=np.int64)
    return replace(prompt, runs=((intro, 1), (text[:before], 1), key_run, (text[before:], 1), question))


def book_stretch(books, n: int, rng: random.Random) -> np.ndarray:
    """``n`` tokens of ``books`` (a ``TokenShards`` split, or anything with ``lengths`` and
    ``doc(i)``): a document drawn in proportion to its length, from a random offset, cycled within
    the document when it is shorter than ``n`` (rare: a book is 100K+ tokens)."""
    lengths = np.asarray(books.lengths, dtype=np.int64)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    at = rng.randrange(int(lengths.sum()))
    d = int(np.searchsorted(np.cumsum(lengths), at, side="right"))
    doc = np.asarray(books.doc(d), dtype=np.int64)
    start = rng.randrange(len(doc))
    return np.resize(np.roll(doc, -start), n) if len(doc) < n + start else doc[start : start + n]


class PasskeySampler:
    """Endless batches of passkey rows ``[batch_size, L]``, L a multiple of ``segment_len`` <= seq_len."""

    ANSWER_ROOM = 8  # tokens kept free for the answer (" 12345." is 3 to 7 tokens with a BPE)
    WORD_KEY_ROOM = 40  # with word keys: a 13-token answer, and the key sentence's two longer mentions

    def __init__(
        self,
        tokenizer,
        seq_len: int,
        segment_len: int,
        batch_size: int,
        seed: int,
        *,
        min_len: int | None = None,
        copy_targets: bool = False,
        word_keys: float = 0.0,
        repeat_keys: float = 0.0,
        cross_boundary: float = 0.0,
        book_filler: float = 0.0,
        books=None,
        log_uniform: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        check_sampler_args(seq_len, segment_len, batch_size, rank, world_size)
        self.parts = PasskeyParts.from_tokenizer(tokenizer)
        self.seq_len, self.segment_len, self.batch_size = seq_len, segment_len, batch_size
        self.min_len = segment_len if min_len is None else int(min_len)
        self.room = self.WORD_KEY_ROOM if word_keys else self.ANSWER_ROOM
        shortest = self.parts.min_length() + self.room
        if not shortest <= self.min_len <= seq_len:
            raise ValueError(
                f"passkey min_len must be in [{shortest}, seq_len={seq_len}] for this tokenizer, "
                f"got {self.min_len}"
            )
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.copy_targets = copy_targets
        if not 0.0 <= word_keys <= 1.0:
            raise ValueError(f"word_keys must be a share in [0, 1], got {word_keys}")
        self.word_keys = float(word_keys)
        self.words = _words(tokenizer) if word_keys else []
        if word_keys and len(self.words) < 100:
            raise ValueError(f"word_keys needs a vocabulary of words; this tokenizer has {len(self.words)}")
        if not 0.0 <= repeat_keys <= 1.0:
            raise ValueError(f"repeat_keys must be a share in [0, 1], got {repeat_keys}")
        self.repeat_keys = float(repeat_keys)
        if not 0.0 <= cross_boundary <= 1.0:
            raise ValueError(f"cross_boundary must be a share in [0, 1], got {cross_boundary}")
        self.cross_boundary = float(cross_boundary)
        if not 0.0 <= book_filler <= 1.0:
            raise ValueError(f"book_filler must be a share in [0, 1], got {book_filler}")
        if book_filler and (books is None or int(np.sum(books.lengths)) == 0):
            raise ValueError("book_filler needs the corpus's training split (books), which has no tokens")
        self.book_filler, self.books = float(book_filler), books
        self.log_uniform = bool(log_uniform)
        self.step = 0

    def _rng(self) -> random.Random:
        return random.Random(f"passkey-train-{self.seed}-{self.step}")

    def next_batch(self) -> Batch:
        rng = self._rng()
        N = self.segment_len
        if self.log_uniform:
            drawn = round(math.exp(rng.uniform(math.log(self.min_len), math.log(self.seq_len))))
            drawn = min(max(drawn, self.min_len), self.seq_len)
        else:
            drawn = rng.randint(self.min_len, self.seq_len)
        L = min(-(-drawn // N) * N, self.seq_len)
        length = drawn - self.room  # the prompt's budget; the answer fits in the room left
        rows = []
        for r in range(self.batch_size * self.world_size):  # every rank draws all; keeps its share
            if self.word_keys and rng.random() < self.word_keys:  # a longer key: more to copy per row
                key = "".join(rng.choice(self.words) for _ in range(rng.randint(3, 12))).strip()
            elif self.repeat_keys and rng.random() < self.repeat_keys:
                key = repeated_digits_key(rng)
            else:
                key = str(rng.randint(10000, 99999))
            prompt = training_prompt(self.parts, length, key, rng.random())
            if self.cross_boundary and rng.random() < self.cross_boundary:
                answer_len = len(answer_ids(self.parts, key))
                if answer_len > 1:
                    before = rng.randint(1, answer_len - 1)  # answer tokens before the boundary
                    prompt = crossing_prompt(prompt, before, N) or prompt
            if self.book_filler and rng.random() < self.book_filler:
                (_, (filler, x), _, (filler_after, y), _) = prompt.runs
                need = x * len(filler) + y * len(filler_after)
                prompt = book_filler_prompt(prompt, book_stretch(self.books, need, rng))
            if r % self.world_size == self.rank:
                rows.append(self._row(prompt, L))
        self.step += 1
        return stack_rows(rows)

    def _row(self, prompt: PasskeyPrompt, L: int) -> tuple[np.ndarray, ...]:
        answer = np.asarray(answer_ids(self.parts, prompt.key), dtype=np.int64)
        ids = np.concatenate([prompt.slice(0, len(prompt)), answer])
        T = len(ids)
        if T > L:  # a long word key: cut filler, not the answer
            raise AssertionError(f"passkey row of {T} tokens does not fit {L}")
        row_ids = np.full(L, PAD_ID, dtype=np.int64)
        row_ids[:T] = ids
        labels = np.full(L, IGNORE, dtype=np.int64)
        first = len(prompt) - 1  # the question's last token predicts the answer's first
        labels[first : T - 1] = answer
        if self.copy_targets:  # also the key's second mention, which the first predicts (local copying)
            key = self.parts.key_ids(prompt.key)
            digits = answer_ids(self.parts, prompt.key)[:-1]
            at = _find(key, digits, start=len(digits) + 1)
            if at is not None:  # (a BPE may merge the mention with its neighbours: then no target)
                at += prompt.key_start
                labels[at - 1 : at - 1 + len(digits)] = digits
        pad = np.ones(L, dtype=bool)
        pad[:T] = False
        start = np.zeros(L, dtype=bool)
        start[0] = True
        return row_ids, labels, pad, start

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "segment_len": self.segment_len,
            "min_len": self.min_len,
            "log_uniform": self.log_uniform,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Any rank of any world size may load the state: a batch depends only on the step and the
        global batch (``batch_size * world_size``), which must match."""
        check_sampler_state(self, state, ("seed", "seq_len", "segment_len", "min_len", "log_uniform"))
        saved = int(state["batch_size"]) * int(state.get("world_size", 1))
        if saved != self.batch_size * self.world_size:
            raise ValueError(
                f"sampler state is for a global batch of {saved} rows, this sampler has "
                f"{self.batch_size * self.world_size} ({self.batch_size} x {self.world_size} ranks)"
            )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"invalid passkey sampler state: step={step}")
        self.step = step


def repeated_digits_key(rng: random.Random, length: int = 5) -> str:
    """A key of ``length`` digits (no leading zero) in which each digit repeats its predecessor with
    probability 1/2, and at least one does: the keys a content-only copy ("after 8 comes ...")
    cannot spell, since the next digit depends on how many were written."""
    if length < 2:
        raise ValueError(f"a key with repeated digits needs at least 2 digits, got {length}")
    digits = [rng.randint(1, 9)]
    for _ in range(length - 1):
        digits.append(digits[-1] if rng.random() < 0.5 else rng.randint(0, 9))
    if all(a != b for a, b in pairwise(digits)):
        i = rng.randint(1, length - 1)
        digits[i] = digits[i - 1]
    return "".join(map(str, digits))


def retrieved(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: True when every labelled position's argmax is its label (greedy reproduces the
    answer). ``logits`` [B, K, V] are for the last K positions of ``labels`` [B, L]."""
    labels = labels[:, -logits.shape[1] :]
    hit = (logits.argmax(-1) == labels) | (labels == IGNORE)
    return hit.all(dim=1) & (labels != IGNORE).any(dim=1)


def answer_span(labels: torch.Tensor) -> int:
    """How many trailing positions cover every label in the batch (for ``logits_to_keep``)."""
    has = (labels != IGNORE).any(dim=0).nonzero()
    return int(labels.shape[1] - has[0, 0]) if len(has) else 1


def _find(seq: tuple[int, ...], sub: tuple[int, ...], start: int = 0) -> int | None:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return None


def _words(tokenizer) -> list[str]:
    """Whole-word tokens of the vocabulary (a space then 3+ lowercase letters), for word keys."""
    words = []
    for i in range(tokenizer.vocab_size):
        w = tokenizer.decode([i])
        if len(w) >= 4 and w[0] == " " and w[1:].isalpha() and w[1:].islower() and w.isascii():
            words.append(w)
    return words


def only_answer(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` with every target but each row's last contiguous run (the answer) set to IGNORE."""
    out = labels.clone()
    for r in range(out.shape[0]):
        at = (out[r] != IGNORE).nonzero().flatten()
        gaps = (at[1:] - at[:-1] > 1).nonzero().flatten()
        if len(gaps):
            out[r, : at[gaps[-1] + 1]] = IGNORE
    return out
