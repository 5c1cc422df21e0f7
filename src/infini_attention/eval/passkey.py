"""Passkey retrieval (paper section 4.3 and App. B): find a 5-digit key hidden in a long haystack.

The prompt is the paper's, verbatim (including its "There and ack again" typo)::

    INTRO + FILLER * x + KEY_SENTENCE + FILLER_AFTER * y + QUESTION

where the key sentence reads ``" The pass key is 12345. Remember it. 12345 is the pass key."``.
Every piece after the intro starts with a space, so with a byte-level BPE (GPT-2 style
pre-tokenisation) encoding the pieces separately and concatenating the ids gives the same ids as
encoding the whole text. The prompt is therefore built as token ids: each piece is encoded once,
the filler blocks' ids are repeated, and the prompt is produced chunk by chunk
(``PasskeyPrompt.chunks``), never as text and never as one tensor, so a 1M-token prompt costs no
more memory than a short one.

Length: ``length`` is the prompt's length in tokens (the answer not counted). With ``fixed`` the
tokens of intro + key sentence + question, ``x`` and ``y`` are chosen so that the total
``fixed + x * len(FILLER) + y * len(FILLER_AFTER)`` is at most ``length`` and less than one filler
block short of it.

Depth: the key's depth is the share of the filler tokens that come before the key sentence,
``x * len(FILLER) / (x * len(FILLER) + y * len(FILLER_AFTER))``. For each trial it is drawn
(seeded) uniformly within the position's band and rounded to whole filler blocks:

- ``start``: depth in [0, 0.1];
- ``middle``: depth in [0.45, 0.55];
- ``end``: the whole key sentence lies in the prompt's last segment (the tokens after the last
  multiple of ``segment_len``), which the question's tokens attend to locally: ``y`` is drawn
  uniformly among the counts that keep it there. When that last segment is too short to hold the
  key sentence and the question, ``y = 0`` (the key right before the question).

Scoring: greedy decoding of up to ``max_new_tokens`` (8) tokens; a trial is correct when the
first 5-digit number in the decoded continuation (a run of exactly five digits) equals the key.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from .perplexity import format_tokens

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
FILLER_AFTER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and ack again."
KEY_SENTENCE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"

POSITIONS = ("start", "middle", "end")
DEPTH_BANDS = {"start": (0.0, 0.1), "middle": (0.45, 0.55)}
_FIVE_DIGITS = re.compile(r"(?<!\d)\d{5}(?!\d)")


def prompt_text(key: str, x: int, y: int) -> str:
    """The prompt as text, for short prompts and tests (long runs never build it)."""
    return INTRO + FILLER * x + KEY_SENTENCE.format(key=key) + FILLER_AFTER * y + QUESTION


def first_five_digit_number(text: str) -> str | None:
    """The first run of exactly five digits in ``text``, or None."""
    m = _FIVE_DIGITS.search(text)
    return m.group(0) if m else None


def score(decoded: str, key: str) -> bool:
    """Exact match: the continuation's first 5-digit number is the key."""
    return first_five_digit_number(decoded) == key


@dataclass(frozen=True)
class PasskeyParts:
    """Token ids of the prompt's fixed pieces for one tokenizer, encoded once."""

    intro: tuple[int, ...]
    filler: tuple[int, ...]
    filler_after: tuple[int, ...]
    question: tuple[int, ...]
    tokenizer: Any = field(repr=False, compare=False)
    key_sentence: str = KEY_SENTENCE  # ``{key}`` is replaced by the key (``eval.haystacks`` rephrases it)

    @classmethod
    def from_tokenizer(cls, tokenizer, key_sentence: str = KEY_SENTENCE) -> PasskeyParts:
        if "{key}" not in key_sentence or not key_sentence.startswith(" "):
            raise ValueError(f"a key sentence starts with a space and holds {{key}}, got {key_sentence!r}")
        parts = [tuple(tokenizer.encode(s)) for s in (INTRO, FILLER, FILLER_AFTER, QUESTION)]
        if not all(parts):
            raise ValueError("the tokenizer encodes a passkey prompt piece to no tokens")
        return cls(*parts, tokenizer=tokenizer, key_sentence=key_sentence)

    def key_ids(self, key: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(self.key_sentence.format(key=key)))

    def min_length(self) -> int:
        """The shortest prompt: no filler at all (a 5-digit key sentence's length varies a little)."""
        return len(self.intro) + len(self.key_ids("00000")) + len(self.question)


@dataclass(frozen=True)
class PasskeyPrompt:
    """A passkey prompt as runs of repeated token blocks, produced chunk by chunk.

    ``runs`` are ``(block ids, repeats)``: the intro first, the question last, the key sentence at
    index ``key_run``; everything else is haystack. The paper's prompt is
    ``intro, filler * x, key sentence, filler_after * y, question`` (``key_run`` 2); the harder
    haystacks (``eval.haystacks``) use long blocks of book text (int64 arrays) or a second sentence.
    """

    key: str
    x: int  # filler blocks before the key (the paper's prompt this one was made from)
    y: int  # filler blocks after the key
    runs: tuple[tuple[Sequence[int], int], ...]  # (block ids, repeats)
    key_run: int = 2
    distractor: str | None = None  # a second 5-digit number in the haystack (``two-keys``), else None

    def __len__(self) -> int:
        return sum(len(block) * n for block, n in self.runs)

    @property
    def key_start(self) -> int:
        """Token index where the key sentence begins."""
        return sum(len(block) * n for block, n in self.runs[: self.key_run])

    @property
    def key_end(self) -> int:
        return self.key_start + len(self.runs[self.key_run][0])

    @property
    def key_sentence_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.runs[self.key_run][0])

    @property
    def depth(self) -> float:
        """Share of the haystack tokens (everything but intro, key sentence and question) before the
        key sentence."""
        before = self.key_start - len(self.runs[0][0])
        haystack = len(self) - len(self.runs[0][0]) - len(self.runs[-1][0]) - (self.key_end - self.key_start)
        return before / haystack if haystack else 0.0

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Token ids ``[start, stop)`` of the prompt as an int64 array (built from the runs)."""
        out, offset = [], 0
        for block, n in self.runs:
            size = len(block) * n
            a, b = max(start, offset), min(stop, offset + size)
            if a < b:
                idx = np.arange(a - offset, b - offset) % len(block)
                out.append(np.asarray(block, dtype=np.int64)[idx])
            offset += size
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def chunks(self, chunk_len: int) -> Iterator[torch.Tensor]:
        """The prompt's ids in 1-D tensors of ``chunk_len`` tokens (the last may be shorter)."""
        T = len(self)
        for a in range(0, T, chunk_len):
            yield torch.from_numpy(self.slice(a, min(a + chunk_len, T)))

    def ids(self) -> torch.Tensor:
        """The whole prompt as one tensor (for tests and short prompts)."""
        return torch.from_numpy(self.slice(0, len(self)))


def build_prompt(
    parts: PasskeyParts,
    length: int,
    position: str,
    key: str,
    segment_len: int,
    rng: random.Random | None = None,
) -> PasskeyPrompt:
    """The prompt of ``length`` tokens (within one filler block) with ``key`` at ``position``.

    See the module docstring for how the depth is drawn; ``rng`` None uses the band's middle
    (and, for ``end``, the largest ``y`` that keeps the key in the last segment).
    """
    _check_length(length)
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if not re.fullmatch(r"\d{5}", key):
        raise ValueError(f"the key must be 5 digits, got {key!r}")
    key_ids = parts.key_ids(key)
    n1, n2 = len(parts.filler), len(parts.filler_after)
    fixed = len(parts.intro) + len(key_ids) + len(parts.question)
    budget = length - fixed
    if budget < 0:
        raise ValueError(
            f"length {length} is too short for the passkey prompt "
            f"(at least {fixed} tokens with this tokenizer)"
        )
    if position == "end":
        tail = length - ((length - 1) // segment_len) * segment_len  # tokens in the last segment
        # key_start >= start of the last segment, whatever the leftover r < n1 of the fit
        y_max = (tail - (n1 - 1) - len(parts.question) - len(key_ids)) // n2
        y_max = max(0, min(y_max, budget // n2))
        y = y_max if rng is None else rng.randint(0, y_max)
        x = (budget - y * n2) // n1
    else:
        lo, hi = DEPTH_BANDS[position]
        depth = (lo + hi) / 2 if rng is None else rng.uniform(lo, hi)
        x = min(round(depth * budget / n1), budget // n1)
        y = (budget - x * n1) // n2
    runs = ((parts.intro, 1), (parts.filler, x), (key_ids, 1), (parts.filler_after, y), (parts.question, 1))
    return PasskeyPrompt(key=key, x=x, y=y, runs=runs)


@torch.no_grad()
def prefill(model, prompt: PasskeyPrompt, *, prefill_segments: int = 8, state=None, start: int = 0):
    """Stream the prompt's tokens ``[start, last chunk)`` through the model, from ``state`` (the state
    after the first ``start`` tokens; None: a fresh one, ``start`` 0).

    Returns ``(state, rest, state_bytes)``: the state after the streamed part, the remaining ids
    (1 to ``prefill_segments * segment_len`` tokens, for ``stream_generate``) and the largest
    ``state.nbytes`` seen between chunks (constant: at most one open segment is buffered).
    """
    chunk = prefill_segments * model.config.segment_len
    if state is None:
        if start:
            raise ValueError("prefill from start > 0 needs the state after those tokens")
        state = model.init_state(1)
    T = len(prompt)
    last = max(start, ((T - 1) // chunk) * chunk)  # start of the final chunk
    state, state_bytes = _stream(model, prompt, state, start, last, chunk)
    return state, torch.from_numpy(prompt.slice(last, T)), state_bytes


def _stream(model, prompt: PasskeyPrompt, state, start: int, stop: int, chunk: int):
    """Feed the prompt's tokens ``[start, stop)`` in pieces that end on multiples of ``chunk`` (whole
    segments, also after a start mid-segment). Returns the new state and the largest ``nbytes`` seen;
    every call returns a new state, so states kept by the caller stay valid."""
    device = next(model.parameters()).device
    state_bytes = state.nbytes
    while start < stop:
        end = min(stop, (start // chunk + 1) * chunk)
        ids = torch.from_numpy(prompt.slice(start, end)).to(device)[None]
        state = model(ids, state, logits_to_keep=1).state
        state_bytes = max(state_bytes, state.nbytes)
        start = end
    return state, state_bytes


@torch.no_grad()
def shared_prefix_states(
    model, prompts: Sequence[PasskeyPrompt], *, prefill_segments: int = 8
) -> tuple[list, list[int], int]:
    """The state after each prompt's tokens before its key sentence, streaming shared tokens once:
    prompts built from the same parts differ there only in how much filler comes first, so the
    longest such prefix is streamed once and the state is kept at every prompt's ``key_start``
    (split-resume is exact: these are the states streaming each prompt alone would reach).

    Prompts whose tokens before the key are not a prefix of one another's (a second key placed
    before the first, another intro) form separate groups, each streamed once. Returns
    ``(states, starts, streamed)``: prompt ``i`` continues from ``states[i]`` after its first
    ``starts[i]`` tokens (``(None, 0)`` for a key at the very start: nothing to share);
    ``streamed`` is how many tokens were fed in all.
    """
    chunk = prefill_segments * model.config.segment_len
    groups: list[tuple[PasskeyPrompt, np.ndarray, list[int]]] = []  # (longest, its prefix, members)
    for i in sorted(range(len(prompts)), key=lambda i: -prompts[i].key_start):
        p = prompts[i]
        prefix = p.slice(0, p.key_start)
        for _, ref, members in groups:
            if np.array_equal(prefix, ref[: p.key_start]):
                members.append(i)
                break
        else:
            groups.append((p, prefix, [i]))
    states: list = [None] * len(prompts)
    starts = [0] * len(prompts)
    streamed = 0
    for longest, _, members in groups:
        state, pos = model.init_state(1), 0
        for i in reversed(members):  # shortest prefix first
            if prompts[i].key_start == 0:
                continue
            state, _ = _stream(model, longest, state, pos, prompts[i].key_start, chunk)
            streamed += prompts[i].key_start - pos
            pos = prompts[i].key_start
            states[i], starts[i] = state, pos
    return states, starts, streamed


def run_trial(
    model,
    parts: PasskeyParts,
    prompt: PasskeyPrompt,
    *,
    max_new_tokens: int = 8,
    prefill_segments: int = 8,
    state=None,
    start: int = 0,
) -> dict[str, Any]:
    """One greedy retrieval: prefill the prompt (from ``state`` after its first ``start`` tokens, see
    ``shared_prefix_states``), decode, score. Returns a JSON-ready dict."""
    from ..generation import stream_generate

    if prompt.key_sentence_ids != parts.key_ids(prompt.key):
        raise ValueError("the prompt's key sentence was not encoded with these parts (tokenizer, phrasing)")
    t0 = time.perf_counter()
    state, rest, state_bytes = prefill(
        model, prompt, prefill_segments=prefill_segments, state=state, start=start
    )
    tokens: list[int] = []
    text = ""
    gen = stream_generate(
        model,
        rest,
        max_new_tokens=max_new_tokens,
        state=state,
        eos_id=getattr(parts.tokenizer, "eos_id", None),
        prefill_segments=prefill_segments,
    )
    for token in gen:
        tokens.append(int(token))
        text = parts.tokenizer.decode(tokens)
        m = _FIVE_DIGITS.search(text)
        if m and m.end() < len(text):  # a complete 5-digit number followed by something else
            break
    gen.close()
    seconds = time.perf_counter() - t0
    # the memory after the whole haystack (before decoding): finite, however long the prompt
    finite = all(bool(torch.isfinite(t).all()) for layer in state.layers for t in (layer.M, layer.z))
    answer = first_five_digit_number(text)
    return {
        "key": prompt.key,
        "output": text,
        "answer": answer,
        "correct": answer == prompt.key,
        **(
            {}
            if prompt.distractor is None
            else {"distractor": prompt.distractor, "answered_distractor": answer == prompt.distractor}
        ),
        "prompt_tokens": len(prompt),
        "key_start": prompt.key_start,
        # where the answer starts inside its segment: from N - 4 on, a 5-digit answer's last digits
        # are decoded in the next segment, with the question only in the memory (docs/passkey.md)
        "answer_offset": len(prompt) % model.config.segment_len,
        "depth": prompt.depth,
        "streamed_tokens": len(prompt) - start,
        "seconds": seconds,
        "state_bytes": state_bytes,
        "memory_finite": finite,
    }


def _check_length(length: Any) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise ValueError(f"lengths must be positive ints, got {length!r}")


def _trial_rng(seed: int, length: int, position: str, trial: int) -> random.Random:
    """An independent, reproducible stream per cell and trial (not tied to which cells run)."""
    return random.Random(f"passkey-{seed}-{length}-{position}-{trial}")


def run_passkey(
    model,
    tokenizer,
    lengths: Sequence[int],
    positions: Sequence[str] = POSITIONS,
    trials: int = 5,
    seed: int = 0,
    *,
    max_new_tokens: int = 8,
    prefill_segments: int = 8,
    share_prefix: bool = True,
    haystack: str = "repeated",
    books=None,
    progress=None,
) -> dict[str, Any]:
    """Passkey accuracy for every (length, position) cell, ``trials`` random keys each.

    ``haystack`` picks the paper's prompt (``repeated``) or one of the harder variants of
    ``eval.haystacks`` (``books``, ``two-keys``, ``rephrased``); ``books`` is the book text's token
    array for ``books`` (default: ``haystacks.book_ids(tokenizer)``, the held-out books).

    With ``share_prefix`` the trials of a cell start from ``shared_prefix_states`` (the filler
    before the key streamed once per cell, not once per trial): the same states, fewer tokens to
    stream. ``False`` streams every prompt from its first token.

    Returns a JSON-ready dict: ``{"lengths", "positions", "trials", "seed", "segment_len",
    "cells": [{"length", "position", "trials", "correct", "accuracy", "prompt_tokens",
    "streamed_tokens", "seconds", "tokens_per_s", "samples": [run_trial's dicts]}], "tokens",
    "seconds", "tokens_per_s"}``; ``tokens_per_s`` counts prompt tokens per second of wall time.
    ``progress(cell)`` is called after each cell.
    """
    lengths = list(lengths)
    positions = list(positions)
    if not lengths:
        raise ValueError("give at least one length")
    for length in lengths:
        _check_length(length)
    if not positions:
        raise ValueError("give at least one position")
    for p in positions:
        if p not in POSITIONS:
            raise ValueError(f"positions must be among {', '.join(POSITIONS)}, got {p!r}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an int >= 1, got {trials!r}")
    from .haystacks import book_ids, haystack_parts, haystack_prompt

    parts = haystack_parts(tokenizer, haystack)
    if haystack == "books" and books is None:
        books = book_ids(tokenizer)
    N = model.config.segment_len
    for length in lengths:  # fail before any long run, not halfway
        if length < parts.min_length() + 1:
            raise ValueError(
                f"length {length} is too short for the passkey prompt "
                f"(at least {parts.min_length() + 1} tokens with this tokenizer)"
            )
        for position in positions:
            haystack_prompt(parts, haystack, length, position, "00000", N, books=books)
    cells = []
    for length in lengths:
        for position in positions:
            t0 = time.perf_counter()
            prompts = []
            for trial in range(trials):
                rng = _trial_rng(seed, length, position, trial)
                key = str(rng.randint(10000, 99999))
                prompts.append(haystack_prompt(parts, haystack, length, position, key, N, rng, books=books))
            if share_prefix:
                states, starts, shared_tokens = shared_prefix_states(
                    model, prompts, prefill_segments=prefill_segments
                )
            else:
                starts, states = [0] * trials, [None] * trials
            samples = [
                run_trial(
                    model,
                    parts,
                    prompt,
                    max_new_tokens=max_new_tokens,
                    prefill_segments=prefill_segments,
                    state=state,
                    start=start,
                )
                for prompt, state, start in zip(prompts, states, starts, strict=True)
            ]
            seconds = time.perf_counter() - t0
            correct = sum(s["correct"] for s in samples)
            tokens = sum(s["prompt_tokens"] for s in samples)
            streamed = sum(s["streamed_tokens"] for s in samples) + (shared_tokens if share_prefix else 0)
            cell = {
                "length": length,
                "position": position,
                "trials": trials,
                "correct": correct,
                "accuracy": correct / trials,
                "prompt_tokens": tokens,
                "streamed_tokens": streamed,
                "memory_finite": all(s["memory_finite"] for s in samples),
                **(
                    {"answered_distractor": sum(s["answered_distractor"] for s in samples)}
                    if haystack == "two-keys"
                    else {}
                ),
                "seconds": seconds,
                "tokens_per_s": tokens / seconds if seconds > 0 else None,
                "samples": samples,
            }
            cells.append(cell)
            if progress is not None:
                progress(cell)
    tokens = sum(c["prompt_tokens"] for c in cells)
    seconds = sum(c["seconds"] for c in cells)
    return {
        "lengths": lengths,
        "positions": positions,
        "haystack": haystack,
        "trials": trials,
        "seed": seed,
        "segment_len": N,
        "cells": cells,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
    }


KEY_KINDS = ("distinct digits", "repeated digit", "adjacent repeat")


def key_kind(key: str) -> str:
    """Which of ``KEY_KINDS`` a key is: five distinct digits (12345), a digit that comes back after
    another (51213), or a digit right after itself (68888). Copying the last two takes counting, not
    only "which digit follows this one", and that is where small models miss."""
    if any(a == b for a, b in pairwise(key)):
        return "adjacent repeat"
    return "repeated digit" if len(set(key)) < len(key) else "distinct digits"


def accuracy_by_key_kind(results: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{kind: (correct, trials)}`` over every sample of ``results`` (kinds that occur, in
    ``KEY_KINDS`` order): tells a miss of the memory from a miss of the copy."""
    counts = {kind: [0, 0] for kind in KEY_KINDS}
    for cell in results["cells"]:
        for sample in cell["samples"]:
            c = counts[key_kind(sample["key"])]
            c[0] += bool(sample["correct"])
            c[1] += 1
    return {kind: (c[0], c[1]) for kind, c in counts.items() if c[1]}


def format_passkey_table(results: dict[str, Any]) -> str:
    """Accuracy table like the paper's Table 3: rows = positions, columns = lengths.

    Each cell reads ``percent (correct/trials)``; a line below splits the accuracy by key kind.
    """
    lengths, positions = results["lengths"], results["positions"]
    by_cell = {(c["length"], c["position"]): c for c in results["cells"]}
    cells = {k: f"{100 * c['accuracy']:.0f}% ({c['correct']}/{c['trials']})" for k, c in by_cell.items()}
    width = max([len(format_tokens(n)) for n in lengths] + [len(s) for s in cells.values()] + [4])
    header = f"{'position':<8}" + "".join(f"  {format_tokens(n):>{width}}" for n in lengths)
    lines = [header, "-" * len(header)]
    for p in positions:
        lines.append(f"{p:<8}" + "".join(f"  {cells.get((n, p), '-'):>{width}}" for n in lengths))
    if results.get("haystack", "repeated") != "repeated":
        lines.append(f"haystack: {results['haystack']}")
    if "answered_distractor" in results["cells"][0]:
        wrong = sum(c["answered_distractor"] for c in results["cells"])
        total = sum(c["trials"] for c in results["cells"])
        lines.append(f"answered the distractor's number instead: {wrong} of {total} trials")
    by_kind = accuracy_by_key_kind(results)
    lines.append(
        "by key: " + ", ".join(f"{kind} {100 * c / n:.0f}% ({c}/{n})" for kind, (c, n) in by_kind.items())
    )
    speed = results.get("tokens_per_s")
    if speed:
        per_cell = "" if results.get("trials") is None else f"{results['trials']} trial(s) per cell, "
        seed = "" if results.get("seed") is None else f"seed {results['seed']}; "
        lines.append(f"{per_cell}{seed}{results['tokens']:,} prompt tokens at {speed:,.0f} tokens/s")
    return "\n".join(lines)


# what must agree for results of separate runs to be one table
_JOIN_MUST_MATCH = ("haystack", "segment_len", "bf16", "memory_off")


def join_passkey_results(parts: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """One results dict from the results of separate runs (e.g. 32K-512K in one process, 1M in
    another): the union of their lengths (ascending), positions and cells. ``names`` (a file name
    per part) go into the errors and into ``joined_from``.

    A cell run twice, or parts that differ in haystack, segment length, bf16 or memory-off, are a
    ``ValueError``: one table must answer one question. Parts from differently named models are
    allowed (a run folder and the same weights shipped) and all their names are kept in ``model``.
    """
    if len(parts) != len(names) or not parts:
        raise ValueError("join_passkey_results needs one name per part and at least one part")
    for part, name in zip(parts, names, strict=True):
        if not isinstance(part, dict) or not all(k in part for k in ("lengths", "positions", "cells")):
            raise ValueError(f"{name}: not passkey results (from 'infini eval passkey --json')")
    for key in _JOIN_MUST_MATCH:
        values = {name: part.get(key) for part, name in zip(parts, names, strict=True)}
        if len({repr(v) for v in values.values()}) > 1:
            listed = ", ".join(f"{n}: {v!r}" for n, v in values.items())
            raise ValueError(f"cannot join passkey results with different {key} ({listed})")
    seen: dict[tuple[int, str], str] = {}
    positions: list[str] = []
    for part, name in zip(parts, names, strict=True):
        for cell in part["cells"]:
            where = (cell["length"], cell["position"])
            if where in seen:
                raise ValueError(
                    f"cell {format_tokens(where[0])} {where[1]} is in both {seen[where]} and {name}"
                )
            seen[where] = name
        positions += [p for p in part["positions"] if p not in positions]
    order = {p: i for i, p in enumerate(positions)}
    cells = sorted(
        (c for part in parts for c in part["cells"]), key=lambda c: (c["length"], order[c["position"]])
    )
    models = list(dict.fromkeys(str(part.get("model")) for part in parts if part.get("model") is not None))
    trials = {part.get("trials") for part in parts}
    seeds = {part.get("seed") for part in parts}
    tokens = sum(c["prompt_tokens"] for c in cells)
    seconds = sum(c["seconds"] for c in cells)
    return {
        "lengths": sorted({n for part in parts for n in part["lengths"]}),
        "positions": positions,
        **{key: parts[0].get(key) for key in _JOIN_MUST_MATCH},
        "trials": trials.pop() if len(trials) == 1 else None,
        "seed": seeds.pop() if len(seeds) == 1 else None,
        "cells": cells,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "model": " + ".join(models) if models else None,
        "joined_from": list(names),
    }


def parse_length(text: str) -> int:
    """``"32768"``, ``"32K"``/``"32k"`` (x1024) or ``"1M"`` (x1048576) -> a positive int."""
    s = text.strip()
    mult = 1
    if s[-1:].upper() == "K":
        mult, s = 2**10, s[:-1]
    elif s[-1:].upper() == "M":
        mult, s = 2**20, s[:-1]
    try:
        value = int(s) * mult
    except ValueError:
        raise ValueError(f"lengths must be positive ints (e.g. 32768, 32K, 1M), got {text!r}") from None
    if value <= 0:
        raise ValueError(f"lengths must be positive ints, got {text!r}")
    return value


__all__ = [
    "FILLER",
    "FILLER_AFTER",
    "INTRO",
    "KEY_SENTENCE",
    "POSITIONS",
    "QUESTION",
    "PasskeyParts",
    "PasskeyPrompt",
    "build_prompt",
    "first_five_digit_number",
    "accuracy_by_key_kind",
    "format_passkey_table",
    "join_passkey_results",
    "key_kind",
    "parse_length",
    "prefill",
    "prompt_text",
    "run_passkey",
    "run_trial",
    "score",
    "shared_prefix_states",
]
