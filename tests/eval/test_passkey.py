"""Passkey: the paper's prompt verbatim, length and depth control, streaming, exact-match scoring."""

from __future__ import annotations

import random
import re

import pytest
import torch

from helpers import ByteTokenizer
from infini_attention import InfiniTransformer, ModelConfig, stream_generate
from infini_attention.eval import passkey as pk
from infini_attention.eval.passkey import (
    PasskeyParts,
    PasskeyPrompt,
    accuracy_by_key_kind,
    build_prompt,
    first_five_digit_number,
    format_passkey_table,
    key_kind,
    parse_length,
    prompt_text,
    run_passkey,
    run_trial,
    score,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# paper.md section 2.2 (App. B), verbatim with its "ack" typo
PAPER = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will "
    "quiz you about the important information there. The grass is green. The sky is blue. The sun is "
    "yellow. Here we go. There and back again. (repeat x times) The pass key is 9054. Remember it. 9054 is "
    "the pass key. The grass is green. The sky is blue. The sun is yellow. Here we go. There and ack again. "
    "(repeat y times) What is the pass key? The pass key is"
)


class OracleTokenizer(ByteTokenizer):
    """Decodes anything as a fixed answer built from the last key it encoded (fake model output)."""

    def __init__(self, answer: str):
        self.answer, self.key = answer, None

    def encode(self, text: str) -> list[int]:
        m = re.search(r"pass key is (\d{5})\.", text)
        if m:
            self.key = m.group(1)
        return super().encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.answer.format(key=self.key)


def tiny_model(segment_len: int = 32, dtype=torch.float32, d_model: int = 16, layers: int = 1):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, d_model=d_model, n_layers=layers, n_heads=2, segment_len=segment_len)
    m = InfiniTransformer(config).to(dtype).eval()
    with torch.no_grad():
        m.embed.weight.normal_()  # varied greedy tokens
    return m


@pytest.fixture(scope="module")
def parts() -> PasskeyParts:
    return PasskeyParts.from_tokenizer(ByteTokenizer())


def test_prompt_text_is_the_papers_verbatim():
    expected = PAPER.replace(" (repeat x times)", "").replace(" (repeat y times)", "")
    assert prompt_text("9054", 1, 1) == expected
    assert "There and ack again." in pk.FILLER_AFTER and "There and back again." in pk.FILLER
    three = prompt_text("12345", 3, 0)
    assert three.count("There and back again.") == 3 and "ack again" not in three.replace("back", "")
    assert three.endswith("12345 is the pass key. What is the pass key? The pass key is")


@pytest.mark.parametrize("length", [300, 1000, 4096, 5000, 20000])
@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_length_is_hit_within_one_filler_block(parts, length, position):
    p = build_prompt(parts, length, position, "31415", segment_len=64, rng=random.Random(length))
    block = max(len(parts.filler), len(parts.filler_after))
    assert length - block < len(p) <= length
    # the ids are the encoding of the prompt's text, and the key sits where the runs say
    text = prompt_text("31415", p.x, p.y)
    ids = p.ids()
    assert ids.tolist() == ByteTokenizer().encode(text)
    key_text = ByteTokenizer().decode(ids[p.key_start : p.key_end].tolist())
    assert key_text == " The pass key is 31415. Remember it. 31415 is the pass key."


def test_depth_bands(parts):
    N = 256
    for trial in range(20):
        rng = random.Random(trial)
        for length in (8192, 100_000):
            slack = len(parts.filler) / (length - parts.min_length())  # one block of rounding
            start = build_prompt(parts, length, "start", "11111", N, rng)
            middle = build_prompt(parts, length, "middle", "11111", N, rng)
            end = build_prompt(parts, length, "end", "11111", N, rng)
            assert 0 <= start.depth <= 0.1 + slack
            assert 0.45 - slack <= middle.depth <= 0.55 + slack
            # length is a multiple of N or not: the key sentence lies wholly in the last segment
            last_segment = (len(end) - 1) // N * N
            assert end.key_start >= last_segment, (length, trial)
            assert end.key_end <= len(end) - len(parts.question)
    # a last segment too short for the key and the question: the key right before the question
    short_tail = build_prompt(parts, 4 * N + 5, "end", "11111", N, random.Random(0))
    assert short_tail.y == 0 and short_tail.key_end == len(short_tail) - len(parts.question)
    # rng None: the band's middle
    assert abs(build_prompt(parts, 100_000, "start", "11111", N).depth - 0.05) < 0.01
    assert abs(build_prompt(parts, 100_000, "middle", "11111", N).depth - 0.5) < 0.01


def test_chunks_and_slices_agree_with_the_whole_prompt(parts):
    p = build_prompt(parts, 3000, "middle", "27182", 64)
    whole = p.ids()
    assert torch.equal(torch.cat(list(p.chunks(128))), whole)
    assert all(len(c) == 128 for c in list(p.chunks(128))[:-1])
    for a, b in [(0, 1), (5, 400), (p.key_start - 3, p.key_end + 7), (len(p) - 10, len(p))]:
        assert p.slice(a, b).tolist() == whole[a:b].tolist()


def test_pieces_concatenate_like_the_whole_text_with_a_bpe_tokenizer():
    """With a byte-level BPE, encoding the pieces once and repeating them equals encoding the text."""
    tok_mod = pytest.importorskip("infini_attention.data.tokenizer")
    corpus = [prompt_text(str(k), 4, 4) for k in range(10000, 10040)] + ["Here we go again, 12 times."] * 5
    tok = tok_mod.Tokenizer.train(corpus, vocab_size=400)
    parts = PasskeyParts.from_tokenizer(tok)
    for position in ("start", "middle", "end"):
        p = build_prompt(parts, 2500, position, "48213", 256, random.Random(1))
        assert p.ids().tolist() == tok.encode(prompt_text("48213", p.x, p.y))


def test_first_five_digit_number_and_score():
    assert first_five_digit_number(" 12345. Remember") == "12345"
    assert first_five_digit_number(" 1234 and 123456 then 54321") == "54321"
    assert first_five_digit_number("no digits") is None
    assert score(" 12345.", "12345")
    assert score("12345", "12345")
    assert not score(" 123456", "12345")  # six digits are not the key
    assert not score(" 54321 12345", "12345")  # only the first 5-digit number counts
    assert not score(" 1234", "12345")


@pytest.mark.parametrize(
    "answer, correct",
    [(" {key}. Remember it.", True), (" {key}", True), (" 00000.", False), (" 1{key}", False)],
)
def test_exact_match_scoring_through_run_passkey(answer, correct):
    """The decoded continuation is faked: accuracy follows the scoring rule, not the model."""
    model = tiny_model()
    r = run_passkey(model, OracleTokenizer(answer), [400, 700], ["start", "end"], trials=2, seed=3)
    assert len(r["cells"]) == 4
    for cell in r["cells"]:
        assert cell["trials"] == 2 and cell["correct"] == (2 if correct else 0)
        assert cell["accuracy"] == (1.0 if correct else 0.0)
        for s in cell["samples"]:
            assert s["correct"] is correct and re.fullmatch(r"\d{5}", s["key"])
    table = format_passkey_table(r)
    lines = table.splitlines()
    assert lines[0].split() == ["position", "400", "700"]
    assert lines[2].split()[0] == "start" and lines[3].split()[0] == "end"
    assert ("100% (2/2)" if correct else "0% (0/2)") in lines[2]
    assert lines[-2].startswith("by key: ")
    by_kind = accuracy_by_key_kind(r)
    assert sum(n for _, n in by_kind.values()) == 8
    assert sum(c for c, _ in by_kind.values()) == (8 if correct else 0)


def test_accuracy_by_key_kind_splits_copy_misses_from_memory_misses():
    assert [key_kind(k) for k in ("12345", "51213", "68888", "22989", "40902")] == [
        "distinct digits",
        "repeated digit",
        "adjacent repeat",
        "adjacent repeat",
        "repeated digit",
    ]
    samples = [("12345", True), ("98765", True), ("51213", False), ("68888", False), ("11223", True)]
    results = {
        "lengths": [1024],
        "positions": ["end"],
        "cells": [
            {
                "length": 1024,
                "position": "end",
                "trials": 5,
                "correct": 3,
                "accuracy": 0.6,
                "samples": [{"key": k, "correct": c} for k, c in samples],
            }
        ],
    }
    assert accuracy_by_key_kind(results) == {
        "distinct digits": (2, 2),
        "repeated digit": (0, 1),
        "adjacent repeat": (1, 2),
    }
    line = format_passkey_table(results).splitlines()[-1]
    assert line == "by key: distinct digits 100% (2/2), repeated digit 0% (0/1), adjacent repeat 50% (1/2)"
    results["cells"][0]["samples"] = [{"key": "12345", "correct": True}]
    assert accuracy_by_key_kind(results) == {"distinct digits": (1, 1)}  # kinds absent are left out


def test_keys_and_depths_are_seeded():
    model = tiny_model()
    tok = ByteTokenizer()
    a = run_passkey(model, tok, [500], ["middle"], trials=3, seed=7)
    b = run_passkey(model, tok, [500], ["middle"], trials=3, seed=7)
    c = run_passkey(model, tok, [500], ["middle"], trials=3, seed=8)

    def keys(r):
        return [(s["key"], s["key_start"], s["output"]) for s in r["cells"][0]["samples"]]

    assert keys(a) == keys(b)
    assert [k for k, _, _ in keys(a)] != [k for k, _, _ in keys(c)]
    assert len({k for k, _, _ in keys(a)}) == 3


def test_streamed_prefill_decodes_like_the_whole_prompt(parts):
    """Prefilling chunk by chunk and then generating equals generating from the whole prompt."""
    model = tiny_model(segment_len=16, dtype=torch.float64, d_model=32, layers=2)
    p = build_prompt(parts, 700, "middle", "55555", 16)
    trial = run_trial(model, parts, p, max_new_tokens=8, prefill_segments=3)
    ref = list(stream_generate(model, p.ids(), max_new_tokens=8))
    text = ByteTokenizer().decode(ref)
    assert text.startswith(trial["output"]) and len(trial["output"]) > 0
    assert trial["prompt_tokens"] == len(p) and trial["state_bytes"] == model.init_state(1).nbytes
    assert trial["memory_finite"] is True


@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_shared_prefix_gives_the_states_and_answers_of_streaming_each_prompt(parts, position):
    """One pass over the common filler, states kept at every key: the same states as streaming each
    prompt alone (float64, so equal to 1e-12), the same greedy answers, fewer tokens streamed."""
    model = tiny_model(segment_len=16, dtype=torch.float64, d_model=32, layers=2)
    prompts = [build_prompt(parts, 900, position, key, 16, random.Random(i)) for i, key in
               enumerate(["12345", "55555", "90210", "31415"])]  # fmt: skip
    snaps, starts, streamed = pk.shared_prefix_states(model, prompts, prefill_segments=3)
    assert starts == [p.key_start for p in prompts] and streamed == max(starts)
    for p, snap in zip(prompts, snaps, strict=True):
        alone = model(p.ids()[None, : p.key_start], model.init_state(1)).state if p.key_start else None
        ref = alone if alone is not None else model.init_state(1)
        for a, b in zip(snap.layers, ref.layers, strict=True):
            for x, y in zip(a.tensors(), b.tensors(), strict=True):
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
        shared = run_trial(model, parts, p, prefill_segments=3, state=snap, start=p.key_start)
        whole = run_trial(model, parts, p, prefill_segments=3)
        assert shared["output"] == whole["output"] and shared["streamed_tokens"] == len(p) - p.key_start
        assert shared["answer_offset"] == whole["answer_offset"] == len(p) % 16
    r = run_passkey(model, ByteTokenizer(), [900], [position], trials=4, seed=1, prefill_segments=3)
    r0 = run_passkey(
        model, ByteTokenizer(), [900], [position], trials=4, seed=1, prefill_segments=3, share_prefix=False
    )
    out = [s["output"] for s in r["cells"][0]["samples"]]
    assert out == [s["output"] for s in r0["cells"][0]["samples"]]
    assert r0["cells"][0]["streamed_tokens"] == r0["cells"][0]["prompt_tokens"]
    assert r["cells"][0]["streamed_tokens"] < r["cells"][0]["prompt_tokens"]
    # a prompt whose tokens before the key differ is streamed alone; the others still share
    odd = _odd(build_prompt(parts, 900, position, "12345", 16))
    three = [prompts[0], odd, prompts[1]]
    snaps2, starts2, streamed2 = pk.shared_prefix_states(model, three, prefill_segments=3)
    assert starts2 == [p.key_start for p in three]  # two groups: the odd prompt's is its own
    assert streamed2 == max(prompts[0].key_start, prompts[1].key_start) + odd.key_start
    odd_alone = model(odd.ids()[None, : odd.key_start], model.init_state(1)).state
    for a, b in zip(snaps2[1].layers, odd_alone.layers, strict=True):
        for x, y in zip(a.tensors(), b.tensors(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    for a, b in zip(snaps2[2].layers, snaps[1].layers, strict=True):
        for x, y in zip(a.tensors(), b.tensors(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def _odd(p: PasskeyPrompt) -> PasskeyPrompt:
    """``p`` with a different intro block."""
    runs = ((p.runs[0][0][1:], 1), *p.runs[1:])
    return PasskeyPrompt(key=p.key, x=p.x, y=p.y, runs=runs)


def test_200k_tokens_stream_at_bounded_memory(monkeypatch):
    """A 200K-token prompt: never materialised whole, never fed in more than a chunk, constant state."""
    model = tiny_model(segment_len=256)
    tok = ByteTokenizer()

    def no_whole_prompt(self):
        raise AssertionError("the whole prompt was materialised")

    monkeypatch.setattr(PasskeyPrompt, "ids", no_whole_prompt)
    widths = []
    handle = model.register_forward_pre_hook(lambda mod, args: widths.append(args[0].shape[1]))
    try:
        r = run_passkey(model, tok, [200_000, 2_000], ["middle"], trials=1, seed=0, prefill_segments=8)
    finally:
        handle.remove()
    long, short = (c["samples"][0] for c in r["cells"])
    assert 200_000 - len(pk.FILLER_AFTER.encode()) < long["prompt_tokens"] <= 200_000
    # constant: the memory plus at most one open segment (the shared prefix stops mid-segment)
    bound = model(torch.zeros(1, 255, dtype=torch.long), model.init_state(1)).state.nbytes
    assert model.init_state(1).nbytes <= long["state_bytes"] <= bound and short["state_bytes"] <= bound
    assert max(widths) <= 8 * 256
    assert sum(widths) >= 200_000 - 100
    assert r["tokens_per_s"] > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lengths": [0]}, "positive"),
        ({"lengths": [-5]}, "positive"),
        ({"lengths": ["100"]}, "positive"),
        ({"lengths": []}, "at least one length"),
        ({"positions": ["top"]}, "positions"),
        ({"trials": 0}, "trials"),
        ({"lengths": [50]}, "too short"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"lengths": [500], "positions": ["start"], "trials": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        run_passkey(tiny_model(), ByteTokenizer(), **args)


def test_parse_length():
    assert [parse_length(s) for s in ("32768", "32K", "128k", "1M", " 7 ")] == [
        32768,
        32768,
        131072,
        2**20,
        7,
    ]
    for bad in ("0", "-1", "x", "1.5K", ""):
        with pytest.raises(ValueError, match="positive"):
            parse_length(bad)
