"""InfiniTransformer: a Llama-style decoder (RMSNorm, SwiGLU, RoPE) with Infini-attention.

Shape legend: B batch, T tokens, V vocabulary, D d_model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import InfiniAttention, RMSNorm, SwiGLU
from ..ops import InfiniState
from .config import ModelConfig


@dataclass(frozen=True)
class ModelState:
    """Per-layer Infini-attention states of one stream (a batch of streams)."""

    layers: tuple[InfiniState, ...]
    segment_len: int

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    @property
    def buffered(self) -> int:
        """Tokens of the open segment (the same in every layer)."""
        return self.layers[0].buffered

    @property
    def nbytes(self) -> int:
        """Bytes held by every tensor of the state, all layers."""
        return sum(layer.nbytes for layer in self.layers)

    def detach(self) -> ModelState:
        """Same values, no autograd history: truncates backpropagation through time here."""
        return ModelState(tuple(layer.detach() for layer in self.layers), self.segment_len)

    def to(self, device: torch.device | str) -> ModelState:
        return ModelState(tuple(layer.to(device) for layer in self.layers), self.segment_len)

    def reset_rows(self, rows: Tensor) -> ModelState:
        """Empty the memory of the streams where ``rows`` ``[B]`` is True (at a segment boundary)."""
        if self.buffered:
            raise ValueError("memory can only be reset at a segment boundary (no open segment)")
        return ModelState(tuple(layer.reset_rows(rows) for layer in self.layers), self.segment_len)


@dataclass
class ModelOutput:
    logits: Tensor  # [B, T, V] (or the last ``logits_to_keep`` positions)
    loss: Tensor | None  # mean cross-entropy over labels != -100; None without labels
    state: ModelState  # continues the stream


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = InfiniAttention(
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.segment_len,
            update=c.update,
            rope_theta=c.rope_theta,
            rope_scaling=c.rope_scaling,
            gate_init=c.gate_init,
            bias=c.attention_bias,
            mem_eps=c.mem_eps,
        )
        self.mlp_norm = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = SwiGLU(c.d_model, c.d_ff)

    def forward(
        self, x: Tensor, state: InfiniState | None, pad_mask: Tensor | None = None
    ) -> tuple[Tensor, InfiniState]:
        a, state = self.attn(self.attn_norm(x), state, pad_mask)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), state


class InfiniTransformer(nn.Module):
    """Decoder-only language model that streams any input length at constant memory.

    ``forward(input_ids, state)`` continues the stream held in ``state``: splitting an input at
    any points and chaining the calls gives the same logits as one call.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        """GPT-2 style: normal(0, init_std), residual outputs scaled by 1/sqrt(2 n_layers)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("attn.gate"):
                nn.init.constant_(p, self.config.gate_init)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def gates(self) -> Iterator[nn.Parameter]:
        """The per-layer gate logits (for their own optimiser group)."""
        return (block.attn.gate for block in self.blocks)

    def init_state(
        self, batch_size: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> ModelState:
        """An empty stream: zero memory, no open segment."""
        p = self.embed.weight
        device = device or p.device
        if dtype is None:  # under autocast the projections (and so the buffers) take its dtype
            kind = p.device.type
            dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else p.dtype
        layers = tuple(b.attn.init_state(batch_size, dtype, device) for b in self.blocks)
        return ModelState(layers, self.config.segment_len)

    def forward(
        self,
        input_ids: Tensor,
        state: ModelState | None = None,
        labels: Tensor | None = None,
        *,
        pad_mask: Tensor | None = None,
        doc_start: Tensor | None = None,
        detach_every: int | None = None,
        checkpoint_segments: bool = False,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        """Continue the stream with ``input_ids`` ``[B, T]``.

        Args:
            state: from an earlier call (None: a new stream).
            labels: ``[B, T]`` targets already shifted (``labels[:, t]`` follows
                ``input_ids[:, t]``); -100 is ignored.
            pad_mask: ``[B, T]`` True on padding. Padding writes nothing into the memory; put it
                after a row's real tokens (causal attention then never sees it) and label it -100.
            doc_start: ``[B, T]`` True where a new document begins: that row's memory is emptied
                there, so nothing leaks from one document into the next. Must fall on segment
                boundaries (stream positions that are multiples of ``segment_len``).
            detach_every: truncated BPTT: cut the gradient through the memory every this many
                segment boundaries (None: full BPTT through the whole input, as the paper).
            checkpoint_segments: recompute each segment in the backward pass instead of
                keeping its activations (the paper's per-segment gradient checkpointing).
            logits_to_keep: return logits for only the last this many positions (0: all).
        """
        self._check_inputs(input_ids, state, labels, detach_every, logits_to_keep)
        B, T = input_ids.shape
        if state is None:
            state = self.init_state(B)
        resets = self._reset_points(doc_start, state, input_ids.shape)
        pad_mask = _check_mask("pad_mask", pad_mask, input_ids.shape)
        if T == 0 or (not resets and detach_every is None and not checkpoint_segments):
            hidden, state = self._body(input_ids, state, pad_mask)
        else:
            ckpt = checkpoint_segments
            hidden, state = self._chunked(input_ids, state, pad_mask, resets, detach_every, ckpt)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # [B, T, V]
        loss = None
        if labels is not None:
            if logits_to_keep:
                labels = labels[:, -logits_to_keep:]
            loss = _cross_entropy(logits, labels)
        return ModelOutput(logits=logits, loss=loss, state=state)

    def _body(
        self, input_ids: Tensor, state: ModelState, pad_mask: Tensor | None = None
    ) -> tuple[Tensor, ModelState]:
        x = self.embed(input_ids)  # [B, T, D]
        layers = []
        for block, layer_state in zip(self.blocks, state.layers, strict=True):
            x, layer_state = block(x, layer_state, pad_mask)
            layers.append(layer_state)
        return self.norm(x), ModelState(tuple(layers), state.segment_len)

    def _chunked(
        self,
        input_ids: Tensor,
        state: ModelState,
        pad_mask: Tensor | None,
        resets: dict[int, Tensor],
        detach_every: int | None,
        ckpt: bool,
    ) -> tuple[Tensor, ModelState]:
        """Run segment-aligned chunks in turn: for document resets, truncated BPTT, checkpointing.

        The input is cut at segment boundaries into pieces (the first one finishes the open
        segment); consecutive pieces are grouped into one batched chunk unless something must
        happen between them: a reset, a detach, or (with checkpointing) every piece.
        """
        N, T = self.config.segment_len, input_ids.shape[1]
        cuts = list(range((N - state.buffered) % N or N, T, N))
        pieces = [(a, b) for a, b in zip([0, *cuts], [*cuts, T], strict=True) if b > a]
        chunks: list[tuple[int, int, int]] = []  # (first piece index, start, end)
        for i, (a, b) in enumerate(pieces):
            detach_here = detach_every is not None and i > 0 and i % detach_every == 0
            if not chunks or ckpt or detach_here or a in resets:
                chunks.append((i, a, b))
            else:
                chunks[-1] = (chunks[-1][0], chunks[-1][1], b)
        hidden = []
        for i, a, b in chunks:  # i: segment boundaries crossed before this chunk
            if detach_every is not None and i > 0 and i % detach_every == 0:
                state = state.detach()
            if a in resets:
                state = state.reset_rows(resets[a])
            mask = None if pad_mask is None else pad_mask[:, a:b]
            if ckpt:
                h, state = checkpoint(self._body, input_ids[:, a:b], state, mask, use_reentrant=False)
            else:
                h, state = self._body(input_ids[:, a:b], state, mask)
            hidden.append(h)
        return torch.cat(hidden, dim=1), state

    def _reset_points(
        self, doc_start: Tensor | None, state: ModelState, shape: torch.Size
    ) -> dict[int, Tensor]:
        """Token index -> rows whose memory is emptied before that token."""
        doc_start = _check_mask("doc_start", doc_start, shape)
        if doc_start is None:
            return {}
        N = self.config.segment_len
        columns = doc_start.any(dim=0).nonzero().flatten().tolist()
        misplaced = [t for t in columns if (state.buffered + t) % N != 0]
        if misplaced:
            raise ValueError(
                f"doc_start must fall on segment boundaries (stream positions that are multiples of "
                f"segment_len={N}); token {misplaced[0]} is at stream offset "
                f"{(state.buffered + misplaced[0]) % N} inside its segment"
            )
        return {t: doc_start[:, t] for t in columns}

    def _check_inputs(
        self,
        input_ids: Tensor,
        state: ModelState | None,
        labels: Tensor | None,
        detach_every: int | None,
        logits_to_keep: int,
    ) -> None:
        V = self.config.vocab_size
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a 2-D tensor [batch, tokens], got {got}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64 or int32 token ids, got {input_ids.dtype}")
        outside = (input_ids < 0) | (input_ids >= V)
        if outside.any():  # one device sync per call (this runs at every decoding step)
            bad = input_ids[outside][0].item()
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {V})")
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape != input_ids.shape):
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
        if detach_every is not None and (
            isinstance(detach_every, bool) or not isinstance(detach_every, int) or detach_every <= 0
        ):
            raise ValueError(f"detach_every must be a positive int or None, got {detach_every!r}")
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        if state is None:
            return
        if not isinstance(state, ModelState):
            raise ValueError(f"state must be a ModelState, got {type(state).__name__}")
        if len(state.layers) != self.config.n_layers or state.segment_len != self.config.segment_len:
            raise ValueError(
                f"state is for {len(state.layers)} layers with segment_len {state.segment_len}, "
                f"but this model has {self.config.n_layers} layers with segment_len "
                f"{self.config.segment_len}"
            )
        if state.batch_size != input_ids.shape[0]:
            raise ValueError(
                f"state is for batch size {state.batch_size}, but input_ids has batch size "
                f"{input_ids.shape[0]}"
            )


@contextmanager
def memory_disabled(model: InfiniTransformer) -> Iterator[InfiniTransformer]:
    """Gate the memory off in every layer (local attention only) inside the block.

    sigmoid(-1e4) is exactly 0, so outputs equal a model without memory; the gates are restored
    on exit, also after an exception.
    """
    saved = [gate.detach().clone() for gate in model.gates()]
    try:
        with torch.no_grad():
            for gate in model.gates():
                gate.fill_(-1e4)
        yield model
    finally:
        with torch.no_grad():
            for gate, value in zip(model.gates(), saved, strict=True):
                gate.copy_(value)


def _check_mask(name: str, mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.shape != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must have the shape of input_ids {tuple(shape)}, got {got}")
    return mask.bool()


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over labelled positions; 0 (with a graph) when a chunk has none."""
    logits = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
    losses = F.cross_entropy(logits, labels.flatten().long(), ignore_index=-100, reduction="sum")
    count = (labels != -100).sum().clamp(min=1)
    return losses / count
