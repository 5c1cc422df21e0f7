"""Copy-task rows: a random sequence repeated; every label is the token one period earlier."""

from __future__ import annotations

import pytest
import torch

from infini_attention.data.copy_task import CopySampler
from infini_attention.data.packing import IGNORE


def test_rows_repeat_with_labels_one_period_back():
    s = CopySampler(50, 96, 32, 4, seed=3, min_period=5, max_period=40, exclude=(0, 7))
    for _ in range(3):
        b = s.next_batch()
        assert b.input_ids.shape == (4, 96) and not b.pad_mask.any() and b.doc_start[:, 0].all()
        assert not ((b.input_ids == 0) | (b.input_ids == 7)).any()
        for ids, lab in zip(b.input_ids, b.labels, strict=True):
            at = (lab != IGNORE).nonzero().flatten()
            period = int(at[0]) + 1
            assert 5 <= period <= 40 and at.tolist() == list(range(period - 1, 95))
            assert torch.equal(ids[period:], ids[:-period])  # periodic
            assert torch.equal(lab[period - 1 : 95], ids[period:])  # next token, known from one period back


def test_seeded_resumable_and_sharded():
    a = CopySampler(50, 64, 16, 2, seed=1)
    first = [a.next_batch().input_ids for _ in range(2)]
    b = CopySampler(50, 64, 16, 2, seed=1)
    b.load_state_dict({"step": 1, "seed": 1, "seq_len": 64, "rank": 0})
    assert torch.equal(b.next_batch().input_ids, first[1]) and not torch.equal(first[0], first[1])
    whole = CopySampler(50, 64, 16, 2, seed=4).next_batch().input_ids
    r1 = CopySampler(50, 64, 16, 1, seed=4, rank=1, world_size=2).next_batch().input_ids
    assert torch.equal(r1[0], whole[1])
    # a batch depends on the step alone: rank 1 of 2 goes on from one process's state
    half = CopySampler(50, 64, 16, 1, seed=1, rank=1, world_size=2)
    half.load_state_dict(a.state_dict())
    c = CopySampler(50, 64, 16, 2, seed=1)
    c.load_state_dict(a.state_dict())
    assert torch.equal(half.next_batch().input_ids[0], c.next_batch().input_ids[1])
    with pytest.raises(ValueError, match="seed=1"):
        CopySampler(50, 64, 16, 2, seed=2).load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_period": 0}, "min_period"),
        ({"min_period": 9, "max_period": 8}, "min_period"),
        ({"max_period": 64}, "max_period"),
        ({"exclude": tuple(range(49))}, "two tokens"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CopySampler(50, 64, 16, 2, seed=0, **kwargs)
