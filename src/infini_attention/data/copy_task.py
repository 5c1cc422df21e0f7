"""Synthetic copying rows: a random token sequence repeated until the row is full.

    row = s s s ...  (s: P random tokens, P drawn per row in [min_period, max_period])
    labels: from position P - 1 on, the next token (a copy of the token P earlier); before, none

Every labelled token is determined by the row's own past, so the loss falls only once the model
finds the earlier occurrence and copies what followed it (an induction head). Large models grow
such heads from billions of tokens of text; a small model trained here for minutes does not, and
without them it cannot learn passkey retrieval, which is the same copy through the memory. Mixing
these rows into pre-training (``[data] copy_every``) grows them in a few hundred steps.

Periods up to the segment length N are copied by local attention; longer ones reach back into
earlier segments, through the memory (whose capacity is about ``head_dim`` associations per head,
so a long random period cannot be recalled whole: keep ``max_period`` near N).
"""

from __future__ import annotations

import random

import numpy as np

from .packing import IGNORE, Batch, check_sampler_args, check_sampler_state, stack_rows


class CopySampler:
    """Endless batches ``[batch_size, seq_len]`` of repeated random sequences (resumable by step)."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        segment_len: int,
        batch_size: int,
        seed: int,
        *,
        min_period: int = 8,
        max_period: int | None = None,
        exclude: tuple[int, ...] = (),
        rank: int = 0,
        world_size: int = 1,
    ):
        check_sampler_args(seq_len, segment_len, batch_size, rank, world_size)
        max_period = segment_len // 2 if max_period is None else max_period
        if not 1 <= min_period <= max_period < seq_len:
            raise ValueError(
                f"copy periods need 1 <= min_period <= max_period < seq_len, got {min_period}, "
                f"{max_period}, {seq_len}"
            )
        self.tokens = np.array([t for t in range(vocab_size) if t not in set(exclude)], dtype=np.int64)
        if len(self.tokens) < 2:
            raise ValueError("the copy task needs at least two tokens to draw from")
        self.seq_len, self.segment_len, self.batch_size = seq_len, segment_len, batch_size
        self.min_period, self.max_period = min_period, max_period
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.step = 0

    def next_batch(self) -> Batch:
        rng = random.Random(f"copy-{self.seed}-{self.step}")
        gen = np.random.default_rng(rng.getrandbits(63))
        L = self.seq_len
        no_pad, start = np.zeros(L, dtype=bool), np.zeros(L, dtype=bool)
        start[0] = True  # one document per row: a fresh memory
        rows = []
        for r in range(self.batch_size * self.world_size):
            period = rng.randint(self.min_period, self.max_period)
            seq = self.tokens[gen.integers(0, len(self.tokens), period)]
            row = np.resize(seq, L)  # seq repeated, cut at L
            labels = np.full(L, IGNORE, dtype=np.int64)
            labels[period - 1 : L - 1] = row[period:]
            if r % self.world_size == self.rank:
                rows.append((row, labels, no_pad, start))
        self.step += 1
        return stack_rows(rows)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "seq_len": self.seq_len, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        # a batch depends only on the step: any rank of any world size may load the state
        check_sampler_state(self, state, ("seed", "seq_len"))
        self.step = int(state["step"])
