"""InfiniTransformer: a Llama-style decoder (RMSNorm, SwiGLU, RoPE) with Infini-attention.

``ModelConfig.attention`` swaps the attention of every block for a Table 2 baseline (same blocks
otherwise); RMT is the one that also changes the model: ``p`` memory tokens are read before each
segment and written after it (Bulatov et al. 2022), their last-layer outputs carried to the next.

Shape legend: B batch, T tokens, V vocabulary, D d_model, p RMT memory tokens.
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

from ..layers import CachedAttention, CacheState, InfiniAttention, RMSNorm, SwiGLU
from ..ops import InfiniState
from .config import ModelConfig


@dataclass(frozen=True)
class ModelState:
    """Per-layer attention states of one stream (a batch of streams), and RMT's memory tokens."""

    layers: tuple[InfiniState | CacheState, ...]
    segment_len: int
    memory: Tensor | None = None  # [B, p, D] RMT only: the memory tokens the next segment reads
    memory_init: Tensor | None = None  # [p, D] RMT only: the learned first memory (a weight)

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    @property
    def buffered(self) -> int:
        """Tokens of the open segment (the same in every layer)."""
        if self.memory is not None and self.layers[0].buffered:  # RMT: the read tokens come first
            return self.layers[0].buffered - self.memory.shape[1]
        return self.layers[0].buffered

    @property
    def nbytes(self) -> int:
        """Bytes held by every tensor of the state, all layers (and RMT's memory tokens)."""
        memory = 0 if self.memory is None else self.memory.numel() * self.memory.element_size()
        return sum(layer.nbytes for layer in self.layers) + memory

    def detach(self) -> ModelState:
        """Same values, no autograd history: truncates backpropagation through time here."""
        memory = None if self.memory is None else self.memory.detach()
        layers = tuple(layer.detach() for layer in self.layers)
        return ModelState(layers, self.segment_len, memory, self.memory_init)

    def to(self, device: torch.device | str) -> ModelState:
        memory = None if self.memory is None else self.memory.to(device)
        layers = tuple(layer.to(device) for layer in self.layers)
        return ModelState(layers, self.segment_len, memory, self.memory_init)

    def reset_rows(self, rows: Tensor) -> ModelState:
        """Empty the memory of the streams where ``rows`` ``[B]`` is True (at a segment boundary)."""
        if self.buffered:
            raise ValueError("memory can only be reset at a segment boundary (no open segment)")
        layers = tuple(layer.reset_rows(rows) for layer in self.layers)
        memory = self.memory
        if memory is not None:  # RMT: back to the learned first memory
            memory = torch.where(rows.bool()[:, None, None], self.memory_init.to(memory), memory)
        return ModelState(layers, self.segment_len, memory, self.memory_init)


@dataclass
class ModelOutput:
    logits: Tensor  # [B, T, V] (or the last ``logits_to_keep`` positions)
    loss: Tensor | None  # mean cross-entropy over labels != -100; None without labels
    state: ModelState  # continues the stream


class Block(nn.Module):
    def __init__(self, config: ModelConfig, index: int = 0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = _attention(config, index)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(
        self, x: Tensor, state: InfiniState | CacheState | None, pad_mask: Tensor | None = None
    ) -> tuple[Tensor, InfiniState | CacheState]:
        a, state = self.attn(self.attn_norm(x), state, pad_mask)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), state


def _attention(c: ModelConfig, index: int) -> nn.Module:
    """The attention module of block ``index`` for ``c.attention``."""
    if c.attention == "infini":
        return InfiniAttention(
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
            overlap=c.local_overlap,
            write_strength=c.write_strength,
        )
    knn = c.attention == "memorizing" and index == c.knn_layer
    mode = {"memorizing": "transformer-xl", "rmt": "local"}.get(c.attention, c.attention)
    # RMT's segment holds its p read tokens, the N text tokens and its p write tokens
    segment = c.segment_len + 2 * c.rmt_memory_tokens if c.attention == "rmt" else c.segment_len
    return CachedAttention(
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        segment,
        mode=mode,
        rope_theta=c.rope_theta,
        rope_scaling=c.rope_scaling,
        bias=c.attention_bias,
        knn_top_k=c.knn_top_k if knn else 0,
        knn_memory=c.knn_memory,
        gate_init=c.gate_init,
    )


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
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        if config.attention == "rmt":
            self.rmt_memory = nn.Parameter(torch.empty(config.rmt_memory_tokens, config.d_model))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._segment_body = None  # compile_segments(): the compiled _body checkpointed pieces run

    def compile_segments(self, **compile_kwargs) -> InfiniTransformer:
        """``torch.compile`` the body that ``forward(..., checkpoint_segments=True)`` runs on each
        segment; every other call stays eager. Per-segment pieces all have one shape ([B, N], the
        first and last possibly shorter), so a few small graphs serve any input length, where
        compiling whole inputs would trace a graph per length with every segment unrolled. Fuses
        the many element-wise ops of a small model (``docs/performance.md``); the first steps pay
        the compilation. Returns the model."""
        self._segment_body = torch.compile(self._body, dynamic=False, **compile_kwargs)
        return self

    def reset_parameters(self) -> None:
        """GPT-2 style: normal(0, init_std), residual outputs scaled by 1/sqrt(2 n_layers)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("attn.gate"):
                nn.init.constant_(p, self.config.gate_init)
            elif name.endswith("attn.write_proj.bias"):
                nn.init.constant_(p, self.config.write_strength_init)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def gates(self) -> Iterator[nn.Parameter]:
        """The per-layer gate logits (for their own optimiser group); none for gateless baselines."""
        return (block.attn.gate for block in self.blocks if hasattr(block.attn, "gate"))

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
        if self.config.attention != "rmt":
            return ModelState(layers, self.config.segment_len)
        first = self.rmt_memory.to(device)
        memory = first[None].expand(batch_size, -1, -1)  # [B, p, D], with gradient into the weight
        return ModelState(layers, self.config.segment_len, memory, first)

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
        if state.memory is not None:
            return self._body_rmt(x, state, pad_mask)
        x, layers = self._blocks(x, state.layers, pad_mask)
        return self.norm(x), ModelState(layers, state.segment_len)

    def _blocks(self, x: Tensor, states: tuple, pad_mask: Tensor | None) -> tuple[Tensor, tuple]:
        """Every block in turn on ``x`` ``[B, T, D]``; returns the last block's output, new states."""
        layers = []
        for block, layer_state in zip(self.blocks, states, strict=True):
            x, layer_state = block(x, layer_state, pad_mask)
            layers.append(layer_state)
        return x, tuple(layers)

    def _body_rmt(self, x: Tensor, state: ModelState, pad_mask: Tensor | None) -> tuple[Tensor, ModelState]:
        """RMT, segment by segment: [p read tokens | N text tokens | p write tokens] per segment.

        The read tokens enter just before a segment's first text token; once its N-th token is in,
        the write tokens see the whole segment, and their last-layer outputs become the memory the
        next segment reads (gradient flows through them: BPTT, cut by ``detach_every``).
        """
        N, T = self.config.segment_len, x.shape[1]
        layers, memory = state.layers, state.memory
        hidden, a = [], 0
        while a < T:
            if layers[0].buffered == 0:  # a new segment: read the memory first
                _, layers = self._blocks(memory, layers, None)
            t0 = layers[0].buffered - memory.shape[1]  # text tokens already in the segment
            b = min(T, a + N - t0)
            h, layers = self._blocks(x[:, a:b], layers, None if pad_mask is None else pad_mask[:, a:b])
            hidden.append(h)
            if t0 + b - a == N:  # the segment is complete: write the memory
                memory, layers = self._blocks(memory, layers, None)
            a = b
        out = torch.cat(hidden, dim=1) if hidden else x
        return self.norm(out), ModelState(layers, state.segment_len, memory, state.memory_init)

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
                # contiguous: a slice's strides carry the row length, and a compiled body is
                # specialised on its inputs' strides (each new length would recompile)
                ids, mask = input_ids[:, a:b].contiguous(), None if mask is None else mask.contiguous()
                body = self._segment_body or self._body
                h, state = checkpoint(body, ids, state, mask, use_reentrant=False)
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
    if model.config.attention not in ("infini", "memorizing"):
        raise ValueError(f"attention {model.config.attention!r} has no memory gate to close")
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
