"""Pack tokenised documents into fixed-length training rows aligned to memory segments.

Packing rule (rows of L = seq_len tokens, segments of N = segment_len tokens):
- documents are laid into rows in order; every document, or piece of a document, starts on a
  segment boundary (row offset a multiple of N) and is marked ``doc_start`` at its first token, so
  the model resets its memory there and no book leaks into the next;
- after a document ends, the row is padded up to the next segment boundary (pad id 0, ``pad_mask``
  True, label -100), so padding never shares a segment with real tokens and never enters the memory;
- a document longer than the rest of the row continues at position 0 of the next row; a row is an
  independent sample, so that piece is marked ``doc_start`` too;
- ``labels[t]`` is the next token of the same document (also across a row break), -100 after the
  document's last token.

The rows are built once; each epoch shuffles them with a generator seeded by (seed, epoch). The epochs
follow one another as one global stream of rows; each step takes the next ``batch_size * world_size``
rows of it, and rank r keeps rows r::world_size of that global batch. The ranks together therefore
see exactly the batches one process with ``batch_size * world_size`` rows sees, whatever the number
of rows per epoch. ``state_dict``/``load_state_dict`` resume exactly; the state is the position in
the global stream, so it also resumes on another world size with the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100
PAD_ID = 0


@dataclass
class Batch:
    """One batch of packed rows; every tensor has shape [B, L]."""

    input_ids: torch.Tensor  # int64 token ids, PAD_ID on padding
    labels: torch.Tensor  # int64 next-token targets, IGNORE where there is none
    pad_mask: torch.Tensor  # bool, True on padding
    doc_start: torch.Tensor  # bool, True at the first token of a document (piece) in the row

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in self.as_tuple()))

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.input_ids, self.labels, self.pad_mask, self.doc_start

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int((~self.pad_mask).sum())


def pack_rows(lengths: list[int] | np.ndarray, seq_len: int, segment_len: int) -> list[np.ndarray]:
    """Lay documents of the given lengths into rows; returns, per row, an int64 array [pieces, 4]
    of (doc index, offset in doc, offset in row, length)."""
    _check_lengths(seq_len, segment_len)
    rows: list[np.ndarray] = []
    row: list[tuple[int, int, int, int]] = []
    pos = 0
    for d, n_doc in enumerate(int(n) for n in lengths):
        off = 0
        while off < n_doc:
            if pos == seq_len:  # row full: the rest of the document goes on in a new row
                rows.append(np.array(row, dtype=np.int64))
                row, pos = [], 0
            n = min(n_doc - off, seq_len - pos)
            row.append((d, off, pos, n))
            off, pos = off + n, pos + n
        pos = -(-pos // segment_len) * segment_len  # pad up to the next segment boundary
    if row:
        rows.append(np.array(row, dtype=np.int64))
    return rows


def check_sampler_args(seq_len: int, segment_len: int, batch_size: int, rank: int, world_size: int) -> None:
    """The settings every sampler (packed, passkey, copy) shares: a ValueError that names the bad one."""
    _check_lengths(seq_len, segment_len)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def check_sampler_state(sampler, state: dict, keys: tuple[str, ...]) -> None:
    """A saved sampler state must come from a sampler with the same ``keys`` settings."""
    for key in keys:
        if key in state and state[key] != getattr(sampler, key):
            have = getattr(sampler, key)
            raise ValueError(f"sampler state is for {key}={state[key]}, this sampler has {have}")


def stack_rows(rows: list[tuple[np.ndarray, ...]]) -> Batch:
    """Rows of (input_ids, labels, pad_mask, doc_start), each [L], as one ``Batch`` [B, L]."""
    return Batch(*(torch.from_numpy(np.stack(col)) for col in zip(*rows, strict=True)))


def _check_lengths(seq_len: int, segment_len: int) -> None:
    if segment_len <= 0 or seq_len <= 0 or seq_len % segment_len:
        raise ValueError(
            f"seq_len must be a positive multiple of segment_len, got seq_len={seq_len}, "
            f"segment_len={segment_len}"
        )


class SequenceSampler:
    """Endless stream of packed batches [batch_size, seq_len] from a ``TokenShards`` split."""

    def __init__(
        self,
        shards,
        seq_len: int,
        segment_len: int,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        check_sampler_args(seq_len, segment_len, batch_size, rank, world_size)
        self.shards = shards
        self.seq_len, self.segment_len, self.batch_size = seq_len, segment_len, batch_size
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.rows = pack_rows(shards.lengths, seq_len, segment_len)
        if not self.rows:
            raise ValueError("no tokens to pack: every document is empty")
        if len(self.rows) < world_size:
            raise ValueError(
                f"{len(self.rows)} packed rows of {seq_len} tokens cannot be shared by {world_size} ranks"
            )
        # position: rows of the epoch's global order already served, all ranks together (every rank
        # holds the same value: they advance in lockstep)
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    @property
    def num_rows(self) -> int:
        """Rows in one epoch, all ranks together."""
        return len(self.rows)

    def global_order(self, epoch: int) -> list[int]:
        """Every row index for ``epoch``, in the order the ranks together serve them."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's row indices for ``epoch``, in the order they are served. Rank r serves the
        stream's rows r::world_size; when the rows per epoch are not a multiple of world_size, that
        phase shifts from one epoch to the next."""
        first = (self.rank - epoch * len(self.rows)) % self.world_size
        return self.global_order(epoch)[first :: self.world_size]

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Materialise row ``r``: input_ids, labels, pad_mask, doc_start, each shape [seq_len]."""
        L = self.seq_len
        ids = np.full(L, PAD_ID, dtype=np.int64)
        labels = np.full(L, IGNORE, dtype=np.int64)
        pad = np.ones(L, dtype=bool)
        start = np.zeros(L, dtype=bool)
        for d, off, pos, n in self.rows[r].tolist():
            doc = self.shards.doc(d)
            ids[pos : pos + n] = doc[off : off + n]
            nxt = doc[off + 1 : off + n + 1]  # one shorter than n where the document ends here
            labels[pos : pos + len(nxt)] = nxt
            pad[pos : pos + n] = False
            start[pos] = True
        return ids, labels, pad, start

    def next_batch(self) -> Batch:
        rows = []
        for i in range(self.batch_size * self.world_size):  # the global batch; this rank keeps its share
            if self._order is None:
                self._order = self.global_order(self.epoch)
            if i % self.world_size == self.rank:
                rows.append(self.row(self._order[self.position]))
            self.position += 1
            if self.position == len(self._order):  # epoch done: roll over
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return stack_rows(rows)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """JSON-serialisable position in the global stream (plus the settings it is only valid for;
        ``rank`` and ``world_size`` are informative: any rank of any world size may load it)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "num_rows": self.num_rows,
            "seq_len": self.seq_len,
            "segment_len": self.segment_len,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        check_sampler_state(self, state, ("seq_len", "segment_len", "num_rows", "seed"))
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.num_rows:
            raise ValueError(f"invalid sampler state: epoch={epoch}, position={position}")
        self.epoch, self.position, self._order = epoch, position, None
