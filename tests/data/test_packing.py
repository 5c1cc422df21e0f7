"""Packed rows: segment-aligned documents, padding only up to the next boundary, exact labels,
every token once per epoch, deterministic shuffling, exact resume and rank sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infini_attention.data.packing import IGNORE, Batch, SequenceSampler, pack_rows
from infini_attention.data.shards import TokenShards


class IdTokenizer:
    """Texts are space-separated token ids: documents with exactly the tokens a test wants."""

    vocab_size = 60_000
    eos_id = None

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]


def make_shards(tmp_path, lengths: list[int]) -> TokenShards:
    """Documents of the given lengths whose tokens are 1, 2, 3, ... (unique, never the pad id 0)."""
    docs, nxt = [], 1
    for d, n in enumerate(lengths):
        docs.append((f"doc{d}", " ".join(str(t) for t in range(nxt, nxt + n))))
        nxt += n
    return TokenShards.build(docs, IdTokenizer(), tmp_path, "train")


def where(shards: TokenShards) -> dict[int, tuple[int, int]]:
    """token id -> (document, index in document)."""
    return {int(t): (d, k) for d in range(shards.num_docs) for k, t in enumerate(shards.doc(d))}


def check_row(shards, ids, labels, pad, start, N, last_token) -> list[int]:
    """Assert the packing rule on one row; returns its real tokens."""
    L, loc = len(ids), where(shards)
    assert start[0] and not pad[0], "a row starts with a document (piece)"
    for t in range(L):
        if pad[t]:
            assert ids[t] == 0 and labels[t] == IGNORE and not start[t]
            if not pad[t - 1]:  # a pad run begins right after the last token of a document ...
                d, k = loc[ids[t - 1]]
                assert k == len(shards.doc(d)) - 1, f"padding at {t} inside document {d}"
                end = -(-t // N) * N  # ... and ends at the next segment boundary
                if ids[t - 1] == last_token:  # except after the corpus's last token: the row's tail
                    end = L
                assert pad[t:end].all() and (end == L or not pad[end]), (
                    f"pad run at {t} does not stop at {end}"
                )
            continue
        d, k = loc[ids[t]]
        doc = shards.doc(d)
        assert labels[t] == (doc[k + 1] if k + 1 < len(doc) else IGNORE), f"label at {t}"
        if start[t]:
            assert t % N == 0, f"doc_start at {t}, not a multiple of segment_len {N}"
            assert k == 0 or t == 0, "a piece starts at its document's start or at a row's start"
        else:
            assert t > 0 and not pad[t - 1] and loc[ids[t - 1]] == (d, k - 1), f"token {t} does not follow on"
    return [int(i) for i, p in zip(ids, pad, strict=True) if not p]


CASES = [  # (seq_len, segment_len, document lengths)
    (8, 4, [3, 6, 2]),
    (16, 4, [1, 1, 1, 1, 1, 4, 4, 16, 17, 3]),
    (12, 3, [50, 2, 0, 7, 36, 1]),  # a document over several rows, an empty one
    (8, 8, [5, 9, 8, 8, 1]),  # one segment per row
    (32, 4, [100, 33, 31, 4, 5, 6, 7, 8]),
]


@pytest.mark.parametrize(("L", "N", "lengths"), CASES)
def test_rows_follow_the_packing_rule(tmp_path, L, N, lengths):
    shards = make_shards(tmp_path, lengths)
    sampler = SequenceSampler(shards, L, N, batch_size=1, seed=0)
    last = sum(lengths)
    seen = []
    for _ in range(sampler.num_rows):  # exactly one epoch, one row per batch
        b = sampler.next_batch()
        seen += check_row(shards, *(t[0].numpy() for t in b.as_tuple()), N, last)
    # every token of every document exactly once per epoch
    assert sorted(seen) == list(range(1, last + 1))
    assert sampler.state_dict()["epoch"] == 1


def test_hand_checked_example(tmp_path):
    # N=4, L=8: doc0 = 1 2 3, doc1 = 4..9 (split over two rows), doc2 = 10 11
    shards = make_shards(tmp_path, [3, 6, 2])
    sampler = SequenceSampler(shards, seq_len=8, segment_len=4, batch_size=2, seed=0)
    rows = [sampler.row(r) for r in range(sampler.num_rows)]
    assert len(rows) == 2
    _ = IGNORE
    expected = [
        (
            [1, 2, 3, 0, 4, 5, 6, 7],
            [2, 3, _, _, 5, 6, 7, 8],
            [0, 0, 0, 1, 0, 0, 0, 0],
            [1, 0, 0, 0, 1, 0, 0, 0],
        ),
        (
            [8, 9, 0, 0, 10, 11, 0, 0],
            [9, _, _, _, 11, _, _, _],
            [0, 0, 1, 1, 0, 0, 1, 1],
            [1, 0, 0, 0, 1, 0, 0, 0],
        ),
    ]
    for got, want in zip(rows, expected, strict=True):
        for g, w in zip(got, want, strict=True):
            assert g.tolist() == [type(g[0].item())(x) for x in w]


def test_batch_shapes_and_dtypes(tmp_path):
    shards = make_shards(tmp_path, [30, 20, 10, 40])
    b = SequenceSampler(shards, 16, 4, batch_size=3, seed=1).next_batch()
    assert isinstance(b, Batch)
    for t, dtype in zip(b.as_tuple(), (torch.int64, torch.int64, torch.bool, torch.bool), strict=True):
        assert t.shape == (3, 16) and t.dtype == dtype
    assert b.num_tokens == int((~b.pad_mask).sum())
    assert b.to("cpu").input_ids.equal(b.input_ids)


def batches(sampler, n):
    return [sampler.next_batch() for _ in range(n)]


def same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x, y) for x, y in zip(p.as_tuple(), q.as_tuple(), strict=True))
        for p, q in zip(a, b, strict=True)
    )


def test_shuffling_is_seeded_and_changes_each_epoch(tmp_path):
    shards = make_shards(tmp_path, [7] * 40)
    make = lambda seed: SequenceSampler(shards, 8, 4, batch_size=1, seed=seed)  # noqa: E731
    s = make(3)
    assert s.num_rows == 40
    first, second = [s.epoch_order(e) for e in (0, 1)]
    assert sorted(first) == sorted(second) == list(range(40)) and first != second
    assert same(batches(make(3), 50), batches(make(3), 50))
    assert not same(batches(make(3), 10), batches(make(4), 10))


@pytest.mark.parametrize("batch_size", [1, 5])
def test_resume_gives_exactly_the_same_batches(tmp_path, batch_size):
    """12 batches in one go == 6, state through JSON into a new sampler, 6 more (across epochs)."""
    shards = make_shards(tmp_path, [13, 40, 3, 22, 9, 60, 1, 17])
    make = lambda: SequenceSampler(shards, 16, 4, batch_size=batch_size, seed=7)  # noqa: E731
    straight = batches(make(), 12)
    first = make()
    head = batches(first, 6)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    assert same(straight, head + batches(resumed, 6))
    assert make().num_rows * 2 < 12 * batch_size or batch_size == 1  # the stream rolls over epochs


def test_ranks_share_each_epoch_without_overlap(tmp_path):
    shards = make_shards(tmp_path, [5, 17, 9, 30, 2, 11, 8, 25, 4])
    world = [SequenceSampler(shards, 8, 4, batch_size=1, seed=5, rank=r, world_size=3) for r in range(3)]
    orders = [s.epoch_order(0) for s in world]
    assert sorted(sum(orders, [])) == list(range(world[0].num_rows))
    seen = []
    for s, order in zip(world, orders, strict=True):
        for _ in order:
            seen += [int(i) for i in s.next_batch().input_ids[0] if i]
    assert sorted(seen) == list(range(1, sum([5, 17, 9, 30, 2, 11, 8, 25, 4]) + 1))


def interleave(parts: list[Batch]) -> torch.Tensor:
    """Ranks' input_ids [b, L] each -> the global batch's rows in order (row i from rank i % W)."""
    W = len(parts)
    return torch.stack([parts[i % W].input_ids[i // W] for i in range(W * parts[0].input_ids.shape[0])])


def test_ranks_together_serve_the_one_process_stream(tmp_path):
    """W ranks of b rows see exactly one process's batches of W * b rows, across epochs, also when
    the rows per epoch are not a multiple of W (each epoch then shifts which rank starts it)."""
    shards = make_shards(tmp_path, [5, 17, 9, 30, 2, 11, 8, 25, 7])  # 17 rows
    one = SequenceSampler(shards, 8, 4, batch_size=4, seed=5)
    two = [SequenceSampler(shards, 8, 4, batch_size=2, seed=5, rank=r, world_size=2) for r in range(2)]
    n = one.num_rows
    assert n % 2 == 1
    for _ in range(3 * n // 4 + 1):  # three epochs and a bit
        assert torch.equal(interleave([s.next_batch() for s in two]), one.next_batch().input_ids)
    assert two[0].state_dict()["position"] == two[1].state_dict()["position"] == one.position
    whole = one.global_order(1)  # epoch 0 holds n (odd) rows: rank 1 serves epoch 1's first row
    assert two[1].epoch_order(1) == whole[0::2] and two[0].epoch_order(1) == whole[1::2]


@pytest.mark.parametrize(("saved_by", "resumed_by"), [(2, 1), (1, 2), (2, 3)])
def test_resume_on_another_world_size(tmp_path, saved_by, resumed_by):
    """The state is the global stream's position: any world size with the same global batch
    (6 rows) goes on exactly where the saving run stopped."""
    shards = make_shards(tmp_path, [5, 17, 9, 30, 2, 11, 8, 25, 7])  # 17 rows: 6 rows a step wrap mid-batch

    def world(W: int) -> list[SequenceSampler]:
        b = 6 // W  # rows per rank
        return [SequenceSampler(shards, 8, 4, batch_size=b, seed=2, rank=r, world_size=W) for r in range(W)]

    straight = world(1)[0]
    expected = [straight.next_batch().input_ids for _ in range(7)]
    saving = world(saved_by)
    for _ in range(4):
        for s in saving:
            s.next_batch()
    state = json.loads(json.dumps(saving[0].state_dict()))  # rank 0's, as a checkpoint holds it
    resumed = world(resumed_by)
    for s in resumed:
        s.load_state_dict(state)
    for want in expected[4:]:
        assert torch.equal(interleave([s.next_batch() for s in resumed]), want)


def test_pack_rows_matches_sampler(tmp_path):
    rows = pack_rows(np.array([3, 6, 2]), 8, 4)
    assert [r.tolist() for r in rows] == [[[0, 0, 0, 3], [1, 0, 4, 4]], [[1, 4, 0, 2], [2, 0, 4, 2]]]


def test_bad_inputs(tmp_path):
    shards = make_shards(tmp_path, [10, 10])
    for L, N in [(10, 4), (0, 4), (8, 0), (-8, 4), (4, 8)]:
        with pytest.raises(ValueError, match="multiple of segment_len"):
            SequenceSampler(shards, L, N, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        SequenceSampler(shards, 8, 4, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="rank"):
        SequenceSampler(shards, 8, 4, batch_size=1, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="ranks"):
        SequenceSampler(shards, 32, 4, batch_size=1, seed=0, world_size=2)  # one row for two ranks
    with pytest.raises(ValueError, match="no tokens"):
        SequenceSampler(make_shards(tmp_path / "empty", []), 8, 4, batch_size=1, seed=0)
    state = SequenceSampler(shards, 8, 4, batch_size=1, seed=0).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        SequenceSampler(shards, 16, 4, batch_size=1, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="position"):
        SequenceSampler(shards, 8, 4, batch_size=1, seed=0).load_state_dict({"epoch": 0, "position": 99})
