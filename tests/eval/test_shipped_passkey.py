"""Regression: the shipped passkey model still retrieves its key through the memory at 8K tokens.

Fails if retrieval breaks (a change to the op, the model, the prompt or the shipped weights). With
the memory gated off the same prompts fail when the key is segments away from the question, so
what passes here is the memory's doing. docs/passkey.md has the full table.
"""

from __future__ import annotations

import pytest

from infini_attention.eval.passkey import run_passkey
from infini_attention.models.transformer import memory_disabled
from infini_attention.pretrained import load_pretrained

pytestmark = pytest.mark.usefixtures("single_thread")

LENGTH, TRIALS, SEED = 8192, 10, 7


@pytest.fixture(scope="module")
def shipped():
    model, tokenizer = load_pretrained("passkey")
    return model.eval(), tokenizer


def test_shipped_passkey_model_retrieves_at_8k(shipped):
    model, tokenizer = shipped
    r = run_passkey(model, tokenizer, [LENGTH], trials=TRIALS, seed=SEED)
    correct = {c["position"]: c["correct"] for c in r["cells"]}
    # measured: 10 / 10 / 10 of 10 (stage 8 of the repeated-keys chain; the first chain's stage 8
    # had 8 / 10 / 8, its stage 7 6 / 10 / 8); broken memory leaves only "end"
    # (the question's own segment): start and middle fall to 0
    assert min(correct.values()) >= 5, correct
    assert all(c["memory_finite"] for c in r["cells"])


def test_without_the_memory_keys_far_from_the_question_are_lost(shipped):
    model, tokenizer = shipped
    with memory_disabled(model):
        r = run_passkey(model, tokenizer, [LENGTH], ["start", "middle"], trials=TRIALS, seed=SEED)
    assert sum(c["correct"] for c in r["cells"]) == 0
