"""Summarisation fine-tuning data: (document -> summary) rows with the loss on the summary only.

Each row is the evaluation's prompt (``eval.summarize.build_prompt``: the title header when the
document has a title, document tokens, then the cue) followed by the reference summary and EOS,
padded on the right::

    [ "Title: T\\n\\n" | document (its beginning) | "\\n\\nTitle: T\\nAbstract:\\n" | summary | EOS | pad ]
                                                           labels: ^^^^^^^^^^^^^^^ (summary + EOS)

(untitled documents: no header and the cue ``PROMPT_SUFFIX``), so the model learns to answer
exactly the cue ``infini eval summarize`` gives it, and to stop.

Fitting a row into ``seq_len``: the document is cut first (its beginning kept, as the evaluation's
``--max-input-tokens`` does), never the header or the cue; the summary is cut (its beginning kept, EOS lost)
only when even an empty document leaves no room for it. A batch's rows are padded to the longest
one rounded up to whole segments (at most ``seq_len``).

Order: documents are served in epochs, each a permutation drawn from ``(seed, epoch)``, as one
global stream of ``batch_size * world_size`` rows per step; rank r keeps rows r::world_size. A batch
is a function of ``(seed, step)`` alone, so the state is the step count and resuming is exact on any
world size with the same global batch.
"""

from __future__ import annotations

import random

import numpy as np

from ..eval.summarize import PROMPT_SUFFIX, encode_text, prompt_frame
from .packing import IGNORE, PAD_ID, Batch, check_sampler_args, check_sampler_state, stack_rows
from .summaries import SummaryDoc, load_aclsum, load_jsonl

# The fewest summary tokens a row must hold: below that, a row teaches little beyond the cue.
MIN_SUMMARY_TOKENS = 16


def load_summary_docs(data: str, split: str = "train", document_field="document", summary_field="summary"):
    """``data`` = "aclsum" (its ``split``) or a ``.jsonl`` file (read whole; ``split`` unused)."""
    if data == "aclsum":
        return load_aclsum(split)
    return load_jsonl(data, document_field, summary_field)


class SummarySampler:
    """Endless batches ``[batch_size, L]`` of summarisation rows, L a multiple of ``segment_len``."""

    def __init__(
        self,
        tokenizer,
        docs: list[SummaryDoc],
        seq_len: int,
        segment_len: int,
        batch_size: int,
        seed: int,
        *,
        max_input_tokens: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        check_sampler_args(seq_len, segment_len, batch_size, rank, world_size)
        if not docs:
            raise ValueError("no summarisation documents to train on")
        if max_input_tokens is not None and max_input_tokens <= 0:
            raise ValueError(
                f"max_input_tokens must be positive (or None: as many as fit), got {max_input_tokens}"
            )
        self.tokenizer, self.docs = tokenizer, list(docs)
        self.suffix = np.asarray(tokenizer.encode(PROMPT_SUFFIX), dtype=np.int64)
        eos = getattr(tokenizer, "eos_id", None)
        self.eos = () if eos is None else (int(eos),)
        if seq_len < len(self.suffix) + MIN_SUMMARY_TOKENS:
            raise ValueError(
                f"seq_len {seq_len} cannot hold the prompt suffix ({len(self.suffix)} tokens) and "
                f"{MIN_SUMMARY_TOKENS} summary tokens"
            )
        self.seq_len, self.segment_len, self.batch_size = seq_len, segment_len, batch_size
        self.max_input_tokens = max_input_tokens
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        # doc index -> (header, document, cue, summary + EOS)
        self._ids: dict[int, tuple[np.ndarray, ...]] = {}
        self.step = 0

    @property
    def num_docs(self) -> int:
        return len(self.docs)

    def tokens(self, i: int) -> tuple[np.ndarray, ...]:
        """``(header, document, cue, summary + EOS)`` ids of document ``i``, tokenised once: an
        ACLSum paper is ~10K tokens and is drawn again every epoch."""
        if i not in self._ids:
            doc = self.docs[i]
            header, cue = prompt_frame(doc.title)
            parts = [encode_text(self.tokenizer, t) for t in (header, doc.document, cue)]
            parts.append([*self.tokenizer.encode(doc.summary), *self.eos])
            self._ids[i] = tuple(np.asarray(p, dtype=np.int64) for p in parts)
        return self._ids[i]

    def fit(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(prompt, target)`` of document ``i`` cut to fit ``seq_len`` (see the module docstring)."""
        header, document, cue, target = self.tokens(i)
        if self.max_input_tokens is not None:
            document = document[: self.max_input_tokens]
        room = self.seq_len - len(header) - len(cue)  # for document + target
        if room < MIN_SUMMARY_TOKENS:
            raise ValueError(
                f"seq_len {self.seq_len} cannot hold document {self.docs[i].id!r}'s title header and "
                f"cue ({len(header) + len(cue)} tokens) and {MIN_SUMMARY_TOKENS} summary tokens"
            )
        target = target[:room]  # only cut when even an empty document leaves no room
        document = document[: room - len(target)]
        return np.concatenate([header, document, cue]), target

    def batch(self, indices: list[int]) -> Batch:
        """The rows of documents ``indices`` as one batch (padded to the longest, whole segments)."""
        return stack_rows(self._rows(indices, indices))

    def _rows(self, indices: list[int], keep: list[int]) -> list[tuple[np.ndarray, ...]]:
        """Rows of ``keep``, padded to the length that the longest of ``indices`` needs."""
        N = self.segment_len
        longest = max(sum(len(p) for p in self.fit(i)) for i in indices)
        L = min(-(-longest // N) * N, self.seq_len)
        rows = []
        for i in keep:
            prompt, target = self.fit(i)
            T = len(prompt) + len(target)
            ids = np.full(L, PAD_ID, dtype=np.int64)
            ids[: len(prompt)] = prompt
            ids[len(prompt) : T] = target
            labels = np.full(L, IGNORE, dtype=np.int64)
            labels[len(prompt) - 1 : T - 1] = target  # the suffix's last token predicts the first
            pad = np.ones(L, dtype=bool)
            pad[:T] = False
            start = np.zeros(L, dtype=bool)
            start[0] = True  # one document per row: a fresh memory
            rows.append((ids, labels, pad, start))
        return rows

    def global_indices(self, step: int) -> list[int]:
        """The documents of the whole global batch of ``step``: the stream of epoch permutations."""
        n, rows = self.num_docs, self.batch_size * self.world_size
        orders: dict[int, list[int]] = {}  # a batch spans at most a few epochs
        out = []
        for pos in range(step * rows, (step + 1) * rows):
            epoch, at = divmod(pos, n)
            if epoch not in orders:
                orders[epoch] = list(range(n))
                random.Random(f"summary-train-{self.seed}-{epoch}").shuffle(orders[epoch])
            out.append(orders[epoch][at])
        return out

    def next_batch(self) -> Batch:
        # every rank builds the whole global batch's length so that all ranks pad to the same L
        indices = self.global_indices(self.step)
        self.step += 1
        return stack_rows(self._rows(indices, indices[self.rank :: self.world_size]))

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "segment_len": self.segment_len,
            "num_docs": self.num_docs,
            "max_input_tokens": self.max_input_tokens,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Any rank of any world size may load the state: a batch depends only on the step and the
        global batch (``batch_size * world_size``), which must match."""
        check_sampler_state(self, state, ("seed", "seq_len", "segment_len", "num_docs", "max_input_tokens"))
        saved = int(state["batch_size"]) * int(state.get("world_size", 1))
        if saved != self.batch_size * self.world_size:
            raise ValueError(
                f"sampler state is for a global batch of {saved} rows, this sampler has "
                f"{self.batch_size * self.world_size} ({self.batch_size} x {self.world_size} ranks)"
            )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"invalid summary sampler state: step={step}")
        self.step = step
