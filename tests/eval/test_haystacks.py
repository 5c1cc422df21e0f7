"""Harder passkey haystacks: each variant changes only what it names, and streams like the paper's."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from helpers import ByteTokenizer
from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.data.corpus import Corpus
from infini_attention.eval import haystacks as hs
from infini_attention.eval.passkey import (
    FILLER,
    INTRO,
    KEY_SENTENCE,
    POSITIONS,
    QUESTION,
    build_prompt,
    format_passkey_table,
    run_passkey,
    run_trial,
)

pytestmark = pytest.mark.usefixtures("single_thread")
TOK = ByteTokenizer()
BOOK = np.frombuffer(
    b"It is a truth universally acknowledged, that a single man " * 40, dtype=np.uint8
).astype(np.int64)


def text(prompt) -> str:
    return TOK.decode(prompt.ids().tolist())


def in_last_segment(prompt, N: int) -> bool:
    return prompt.key_start >= ((len(prompt) - 1) // N) * N


@pytest.mark.parametrize("position", POSITIONS)
def test_repeated_is_the_papers_prompt(position):
    parts = hs.haystack_parts(TOK, "repeated")
    for length in (300, 777, 2049):
        a = hs.haystack_prompt(parts, "repeated", length, position, "27182", 64, random.Random(length))
        assert a == build_prompt(parts, length, position, "27182", 64, random.Random(length))


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("book", [BOOK, BOOK[:100]], ids=["long-book", "cycled-book"])
def test_books_replace_the_filler_and_nothing_else(position, book):
    parts = hs.haystack_parts(TOK, "books")
    for length in (500, 1333, 2048):
        plain = build_prompt(parts, length, position, "16180", 64, random.Random(length))
        p = hs.haystack_prompt(
            parts, "books", length, position, "16180", 64, random.Random(length), books=book
        )
        assert (len(p), p.key_start, p.key_end, p.depth) == (
            len(plain),
            plain.key_start,
            plain.key_end,
            plain.depth,
        )
        ids = p.ids().numpy()
        filler = np.concatenate(
            [ids[len(parts.intro) : p.key_start], ids[p.key_end : len(p) - len(parts.question)]]
        )
        assert np.array_equal(filler, np.resize(book, len(filler)))  # the book from its start, in order
        t = text(p)
        assert t.startswith(INTRO) and t.endswith(QUESTION) and KEY_SENTENCE.format(key="16180") in t
        assert FILLER not in t
        assert in_last_segment(p, 64) == in_last_segment(plain, 64)  # "end": unless there is no room


def test_books_need_the_text():
    with pytest.raises(ValueError, match="book text"):
        hs.haystack_prompt(hs.haystack_parts(TOK, "books"), "books", 900, "start", "12345", 64)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("N", [128, 200, 256])  # room in the last segment for bytes
def test_two_keys_add_one_distractor_within_the_length(position, N):
    parts = hs.haystack_parts(TOK, "two-keys")
    sides = set()
    for trial in range(40):
        length = 1200 + 97 * trial
        p = hs.haystack_prompt(parts, "two-keys", length, position, "12345", N, random.Random(trial))
        t = text(p)
        assert len(p) <= length and p.distractor != "12345" and len(p.distractor) == 5
        assert t.count(hs.DISTRACTOR.format(key=p.distractor)) == 1 and t.count("12345") == 2
        assert t.startswith(INTRO) and t.endswith(QUESTION)
        assert TOK.decode(list(p.key_sentence_ids)) == KEY_SENTENCE.format(key="12345")
        sides.add(t.index("door code") < t.index("pass key is 12345"))
        if position == "end":
            assert in_last_segment(p, N) and len(p) > length - 6 * N  # a few 90-byte blocks out
    assert sides == ({True} if position == "end" else {True, False})


def test_rephrased_key_sentence():
    parts = hs.haystack_parts(TOK, "rephrased")
    p = hs.haystack_prompt(parts, "rephrased", 900, "end", "98765", 128, random.Random(0))
    t = text(p)
    assert hs.REPHRASED_KEY.format(key="98765") in t and "Remember it" not in t and t.endswith(QUESTION)
    assert in_last_segment(p, 128)
    model = InfiniTransformer(ModelConfig(vocab_size=257, d_model=16, n_layers=1, n_heads=2, segment_len=128))
    run_trial(model.eval(), parts, p)
    with pytest.raises(ValueError, match="phrasing"):  # the paper's parts do not match this prompt
        run_trial(model.eval(), hs.haystack_parts(TOK, "repeated"), p)


def test_unknown_haystack():
    with pytest.raises(ValueError, match="haystack must be one of"):
        hs.haystack_parts(TOK, "needles")


@pytest.mark.parametrize("haystack", ["two-keys", "books"])
def test_shared_prefixes_give_the_answers_of_streaming_each_prompt(haystack):
    """Two-keys prompts do not all share the tokens before their key (the distractor may come first):
    those stream alone or in their own group, and every answer is the one-by-one answer."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, d_model=32, n_layers=2, n_heads=2, segment_len=16)
    model = InfiniTransformer(config).double().eval()
    with torch.no_grad():
        model.embed.weight.normal_()
    kw = dict(trials=6, seed=3, prefill_segments=3, haystack=haystack, books=BOOK)
    shared = run_passkey(model, TOK, [700], ["start", "middle"], **kw)
    alone = run_passkey(model, TOK, [700], ["start", "middle"], share_prefix=False, **kw)
    for a, b in zip(shared["cells"], alone["cells"], strict=True):
        assert [s["output"] for s in a["samples"]] == [s["output"] for s in b["samples"]]
        assert b["streamed_tokens"] == b["prompt_tokens"] and a["streamed_tokens"] <= a["prompt_tokens"]
        if haystack == "two-keys":
            assert all("answered_distractor" in s for s in a["samples"]) and "answered_distractor" in a
    assert sum(c["streamed_tokens"] for c in shared["cells"]) < sum(
        c["prompt_tokens"] for c in shared["cells"]
    )
    assert shared["haystack"] == haystack and f"haystack: {haystack}" in format_passkey_table(shared)


class DistractedTokenizer(ByteTokenizer):
    """Decodes anything as the last door code it encoded (a model that answers the distractor)."""

    def encode(self, text: str) -> list[int]:
        if "door code is" in text:
            self.code = text.split("door code is ")[1][:5]
        return super().encode(text)

    def decode(self, ids: list[int]) -> str:
        return f" {self.code}."


def test_answering_the_distractor_is_counted_wrong():
    model = InfiniTransformer(ModelConfig(vocab_size=257, d_model=16, n_layers=1, n_heads=2, segment_len=64))
    # one trial per cell: a cell builds its prompts, then decodes them (the last code is this trial's)
    r = run_passkey(model.eval(), DistractedTokenizer(), [600], POSITIONS, trials=1, haystack="two-keys")
    assert [(c["correct"], c["answered_distractor"]) for c in r["cells"]] == [(0, 1)] * 3
    assert "answered the distractor's number instead: 3 of 3 trials" in format_passkey_table(r)


def test_book_ids_join_the_held_out_books_in_name_order(monkeypatch):
    monkeypatch.setattr(
        "infini_attention.data.corpus.load_corpus",
        lambda spec, cache_dir=None: Corpus(
            train=[("t", "train text")], eval=[("b", "Second."), ("a", "First.")]
        ),
    )
    assert TOK.decode(hs.book_ids(TOK).tolist()) == "First.\n\nSecond."
