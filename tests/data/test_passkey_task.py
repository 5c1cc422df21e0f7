"""Passkey fine-tuning rows: the evaluation's template, the answer as the only target, resumable."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from helpers import ByteTokenizer
from infini_attention.data.packing import IGNORE
from infini_attention.data.passkey_task import (
    PasskeySampler,
    answer_ids,
    answer_span,
    book_stretch,
    crossing_prompt,
    repeated_digits_key,
    retrieved,
    training_prompt,
)
from infini_attention.eval.passkey import QUESTION, PasskeyParts, key_kind, prompt_text


@pytest.fixture
def tok():
    return ByteTokenizer()


def test_rows_are_prompt_then_answer_then_padding(tok):
    sampler = PasskeySampler(tok, seq_len=1024, segment_len=128, batch_size=3, seed=5, min_len=400)
    for _ in range(4):
        b = sampler.next_batch()
        B, L = b.input_ids.shape
        assert B == 3 and L % 128 == 0 and 400 <= L <= 1024
        for r in range(B):
            real = int((~b.pad_mask[r]).sum())
            assert not b.pad_mask[r, :real].any() and b.pad_mask[r, real:].all()
            assert (b.input_ids[r, real:] == 0).all() and b.doc_start[r].tolist() == [True] + [False] * (
                L - 1
            )
            text = tok.decode(b.input_ids[r, :real].tolist())
            m = re.fullmatch(
                r".* The pass key is (\d{5})\. Remember it\. \1 is the pass key\..*"
                + re.escape(QUESTION)
                + r" (\d{5})\.",
                text,
            )
            assert m and m.group(1) == m.group(2), text[-200:]
            # the labels are the answer, each at the position that predicts it
            lab = b.labels[r]
            at = (lab != IGNORE).nonzero().flatten()
            answer = answer_ids(PasskeyParts.from_tokenizer(tok), m.group(1))
            assert lab[at].tolist() == list(answer)
            assert at.tolist() == list(range(real - len(answer) - 1, real - 1))
            assert b.input_ids[r, at + 1].tolist() == list(answer)


def test_depth_and_length(tok):
    parts = PasskeyParts.from_tokenizer(tok)
    for depth in (0.0, 0.3, 1.0):
        p = training_prompt(parts, 2000, "12345", depth)
        assert 2000 - len(parts.filler) < len(p) <= 2000
        assert p.depth == pytest.approx(depth, abs=len(parts.filler) / 2000 + 1e-9)
        assert tok.decode(p.ids().tolist()) == prompt_text("12345", p.x, p.y)
    with pytest.raises(ValueError, match="depth"):
        training_prompt(parts, 2000, "12345", 1.5)
    with pytest.raises(ValueError, match="too short"):
        training_prompt(parts, 50, "12345", 0.5)


def test_resume_and_rank_sharding(tok):
    a = PasskeySampler(tok, 512, 64, 2, seed=1, min_len=300)
    first = [a.next_batch() for _ in range(3)]
    b = PasskeySampler(tok, 512, 64, 2, seed=1, min_len=300)
    b.load_state_dict(a.state_dict())
    c = PasskeySampler(tok, 512, 64, 2, seed=1, min_len=300)
    for _ in range(3):
        c.next_batch()
    assert torch.equal(b.next_batch().input_ids, c.next_batch().input_ids)
    assert not torch.equal(first[0].input_ids[:, :300], first[1].input_ids[:, :300])
    # two ranks split the rows a single process would draw
    whole = PasskeySampler(tok, 512, 64, 4, seed=2, min_len=300).next_batch().input_ids
    r0 = PasskeySampler(tok, 512, 64, 2, seed=2, min_len=300, rank=0, world_size=2).next_batch().input_ids
    r1 = PasskeySampler(tok, 512, 64, 2, seed=2, min_len=300, rank=1, world_size=2).next_batch().input_ids
    assert torch.equal(torch.stack([r0[0], r1[0], r0[1], r1[1]]), whole)
    # the state resumes on another world size with the same global batch (4 rows), not another
    one = PasskeySampler(tok, 512, 64, 4, seed=2, min_len=300)
    one.load_state_dict(a.state_dict() | {"seed": 2, "batch_size": 2, "world_size": 2, "rank": 1})
    assert one.step == 3
    with pytest.raises(ValueError, match="global batch of 2 rows, this sampler has 4"):
        one.load_state_dict(a.state_dict() | {"seed": 2})
    with pytest.raises(ValueError, match="seed=1"):
        PasskeySampler(tok, 512, 64, 2, seed=9, min_len=300).load_state_dict(a.state_dict())


def test_log_uniform_lengths_give_short_and_long_batches_alike(tok):
    """Half the log-uniform draws in [256, 16384] are <= 2048 (the geometric midpoint), against ~11%
    of uniform ones; every row length is whole segments within [min_len, seq_len]; resumable."""

    def lengths(log_uniform: bool, n: int = 300) -> list[int]:
        s = PasskeySampler(tok, 16384, 64, 1, seed=3, min_len=256, log_uniform=log_uniform)
        return [s.next_batch().input_ids.shape[1] for _ in range(n)]

    log, flat = lengths(True), lengths(False)
    assert all(256 <= L <= 16384 and L % 64 == 0 for L in log + flat)
    assert 0.4 < sum(L <= 2048 for L in log) / len(log) < 0.6
    assert sum(L <= 2048 for L in flat) / len(flat) < 0.2
    assert max(log) > 8192  # the long end is still drawn
    a = PasskeySampler(tok, 4096, 64, 2, seed=1, min_len=300, log_uniform=True)
    a.next_batch()
    b = PasskeySampler(tok, 4096, 64, 2, seed=1, min_len=300, log_uniform=True)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch().input_ids, b.next_batch().input_ids)
    with pytest.raises(ValueError, match="log_uniform=True"):
        PasskeySampler(tok, 4096, 64, 2, seed=1, min_len=300).load_state_dict(a.state_dict())


def test_cross_boundary_puts_a_segment_boundary_inside_the_answer(tok):
    N = 128
    crossed = set()
    sampler = PasskeySampler(tok, 8192, N, 4, seed=3, min_len=4096, cross_boundary=1.0)
    plain = PasskeySampler(tok, 8192, N, 4, seed=3, min_len=4096)
    for _ in range(6):
        b, ref = sampler.next_batch(), plain.next_batch()
        for r in range(b.input_ids.shape[0]):
            real = int((~b.pad_mask[r]).sum())
            text = tok.decode(b.input_ids[r, :real].tolist())
            m = re.fullmatch(
                r".* The pass key is (\d{5})\. Remember it\. \1 is the pass key\..* (\d{5})\.", text
            )
            assert m and m.group(1) == m.group(2), text[-120:]
            n_answer = len(answer_ids(PasskeyParts.from_tokenizer(tok), m.group(1)))
            prompt_len = real - n_answer
            before = -prompt_len % N  # answer tokens before the next boundary
            assert 1 <= before <= n_answer - 1, (prompt_len, n_answer)
            crossed.add(before)
            assert real <= int((~ref.pad_mask[r]).sum())  # only shortened
    assert len(crossed) >= 3  # the boundary falls at different places in the answer
    # the default draws the same rows as before the option existed
    a = PasskeySampler(tok, 8192, N, 4, seed=3, min_len=4096, cross_boundary=0.0).next_batch()
    assert torch.equal(
        a.input_ids, PasskeySampler(tok, 8192, N, 4, seed=3, min_len=4096).next_batch().input_ids
    )


def test_crossing_prompt_keeps_the_depth_and_gives_up_without_filler(tok):
    parts = PasskeyParts.from_tokenizer(tok)
    p = training_prompt(parts, 12000, "12345", 0.4)
    for before in (1, 3, 5):
        c = crossing_prompt(p, before, 64)
        assert (len(c) + before) % 64 == 0 and len(c) <= len(p)
        # only whole blocks go: the depth moves by at most the share of filler removed
        removed = (len(p) - len(c)) / (p.x * len(parts.filler) + p.y * len(parts.filler_after))
        assert (p.x + p.y) - (c.x + c.y) <= 2 * 64 and c.depth == pytest.approx(p.depth, abs=removed + 1e-9)
        assert tok.decode(c.ids().tolist()) == prompt_text("12345", c.x, c.y)
    bare = training_prompt(
        parts, len(parts.intro) + len(parts.key_ids("12345")) + len(parts.question), "12345", 0.5
    )
    assert bare.x == bare.y == 0
    assert crossing_prompt(bare, (-len(bare) - 1) % 64 or 2, 64) is None


def _keys(sampler, batches):
    keys = []
    for _ in range(batches):
        b = sampler.next_batch()
        for r in range(b.input_ids.shape[0]):
            text = sampler.parts.tokenizer.decode(b.input_ids[r].tolist())
            keys.append(re.search(r"The pass key is (\d{5})\.", text).group(1))
    return keys


def _adjacent_repeat(key: str) -> bool:
    return key_kind(key) == "adjacent repeat"


def test_repeat_keys_share_of_keys_with_repeated_digits(tok):
    def sampler(share):
        return PasskeySampler(tok, 512, 64, 8, seed=3, min_len=300, repeat_keys=share)

    plain, hard, every = _keys(sampler(0.0), 25), _keys(sampler(0.5), 25), _keys(sampler(1.0), 25)
    assert all(_adjacent_repeat(k) for k in every)
    share = lambda keys: sum(map(_adjacent_repeat, keys)) / len(keys)  # noqa: E731
    # uniform keys: 1 - 0.9**4 = 34% have adjacent repeats; half hard keys: 0.5 + 0.5 * 0.34 = 67%
    assert 0.2 < share(plain) < 0.5 and 0.55 < share(hard) < 0.8, (share(plain), share(hard))


def test_repeated_digits_key():
    import random

    rng = random.Random(0)
    keys = [repeated_digits_key(rng) for _ in range(2000)]
    assert all(len(k) == 5 and k.isdigit() and k[0] != "0" and _adjacent_repeat(k) for k in keys)
    runs = [max(len(m.group()) for m in re.finditer(r"(\d)\1*", k)) for k in keys]
    assert max(runs) == 5 and sum(r >= 3 for r in runs) > 400  # long runs (68888) are common
    assert len(set(keys)) > 1000
    with pytest.raises(ValueError, match="at least 2 digits"):
        repeated_digits_key(rng, 1)


def test_bad_settings(tok):
    with pytest.raises(ValueError, match="repeat_keys"):
        PasskeySampler(tok, 512, 64, 2, seed=0, min_len=300, repeat_keys=-0.1)
    with pytest.raises(ValueError, match="cross_boundary"):
        PasskeySampler(tok, 512, 64, 2, seed=0, min_len=300, cross_boundary=1.5)
    with pytest.raises(ValueError, match="min_len"):
        PasskeySampler(tok, 512, 64, 2, seed=0, min_len=10)
    with pytest.raises(ValueError, match="multiple of segment_len"):
        PasskeySampler(tok, 500, 64, 2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        PasskeySampler(tok, 512, 64, 0, seed=0)


class _Books:
    """A stand-in for a TokenShards split: documents of distinct byte ranges, so a stretch's
    source is visible in its tokens."""

    def __init__(self, texts):
        self.docs = [np.frombuffer(t.encode(), dtype=np.uint8).astype(np.int64) for t in texts]
        self.lengths = np.array([len(d) for d in self.docs])

    def doc(self, i):
        return self.docs[i]


def test_book_filler_replaces_the_filler_with_book_text(tok):
    """The book rows keep the template's intro, key sentence, question and answer, with book text in
    place of every filler sentence and the row as long as a plain one; the share is about as asked;
    resumable."""
    books = _Books(["abcdefghij " * 300, "0123 KLMNOP " * 200])
    plain = PasskeySampler(tok, 1024, 64, 8, seed=4, min_len=400)
    mixed = PasskeySampler(tok, 1024, 64, 8, seed=4, min_len=400, book_filler=0.5, books=books)
    n_book = 0
    for _ in range(6):
        a, b = plain.next_batch(), mixed.next_batch()
        assert a.input_ids.shape == b.input_ids.shape
        for r in range(a.input_ids.shape[0]):
            text = tok.decode(b.input_ids[r][~b.pad_mask[r]].tolist())
            m = re.fullmatch(
                r"(.*?)( The pass key is (\d{5})\. Remember it\. \3 is the pass key\.)(.*)"
                + re.escape(QUESTION) + r" \3\.", text, flags=re.S,
            )  # fmt: skip
            assert m, text[-200:]
            if "grass" in text:
                continue
            n_book += 1
            intro = PasskeyParts.from_tokenizer(tok).intro
            filler = (m.group(1) + m.group(4))[len(tok.decode(list(intro))) :]
            assert set(filler) <= set("abcdefghij ") or set(filler) <= set("0123 KLMNOP"), filler[:80]
            L, real = b.input_ids.shape[1], int((~b.pad_mask[r]).sum())  # as long as a plain row:
            assert L - 64 - mixed.room - len(PasskeyParts.from_tokenizer(tok).filler) < real <= L
    assert 12 <= n_book <= 36, n_book  # 48 rows, half of them drawn with book text
    again = PasskeySampler(tok, 1024, 64, 8, seed=4, min_len=400, book_filler=0.5, books=books)
    again.load_state_dict(mixed.state_dict())
    assert torch.equal(again.next_batch().input_ids, mixed.next_batch().input_ids)
    with pytest.raises(ValueError, match="book_filler needs the corpus's training split"):
        PasskeySampler(tok, 1024, 64, 8, seed=4, min_len=400, book_filler=0.5)
    with pytest.raises(ValueError, match="book_filler must be a share"):
        PasskeySampler(tok, 1024, 64, 8, seed=4, min_len=400, book_filler=2.0, books=books)


def test_book_stretch_reads_one_document_and_cycles_a_short_one():
    import random

    books = _Books(["a" * 50, "b" * 5000])
    rng = random.Random(0)
    stretches = [book_stretch(books, 100, rng) for _ in range(200)]
    assert all(len(s) == 100 and len(set(s.tolist())) == 1 for s in stretches)  # never two documents
    assert 0 < sum(s[0] == ord("a") for s in stretches) < 20  # drawn in proportion to length (1%)
    short = _Books(["xyz"])
    assert bytes(book_stretch(short, 7, rng).astype(np.uint8)).decode() in ("xyzxyzx", "yzxyzxy", "zxyzxyz")
    assert len(book_stretch(books, 0, rng)) == 0


def test_retrieved_is_exact_match_of_the_answer():
    labels = torch.full((3, 10), IGNORE)
    labels[:, 6:9] = torch.tensor([4, 5, 6])
    logits = torch.zeros(3, 5, 8)  # the last 5 positions
    for r, answer in enumerate(([4, 5, 6], [4, 5, 7], [4, 5, 6])):
        for j, t in enumerate(answer):
            logits[r, 1 + j, t] = 1.0
    logits[2, 4, 3] = 1.0  # a position without a label does not count
    assert retrieved(logits, labels).tolist() == [True, False, True]
    assert answer_span(labels) == 4
    assert answer_span(torch.full((2, 5), IGNORE)) == 1
