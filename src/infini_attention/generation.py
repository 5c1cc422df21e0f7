"""Streaming generation: constant memory, any prompt length."""

from __future__ import annotations

from collections.abc import Generator

import torch
from torch import Tensor

from .models.transformer import InfiniTransformer, ModelState


@torch.no_grad()
def stream_generate(
    model: InfiniTransformer,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    state: ModelState | None = None,
    eos_id: int | None = None,
    *,
    generator: torch.Generator | None = None,
    prefill_segments: int = 8,
) -> Generator[int | Tensor, None, ModelState]:
    """Yield new token ids one at a time, after streaming the prompt through the model.

    The prompt ``[T]`` (or ``[B, T]``) is fed ``prefill_segments`` segments at a time (batched,
    then the activations are dropped), so its length costs time but not memory. Decoding keeps
    a key/value cache of at most ``segment_len - 1`` tokens (the open segment) and writes it to
    memory when the segment completes.

    Yields an ``int`` per step for a 1-D prompt, a ``[B]`` tensor for a 2-D one. Stops after
    ``max_new_tokens`` or once every sequence has produced ``eos_id`` (which is yielded).
    The generator's return value (``StopIteration.value``) is the final state, which holds
    the prompt and every yielded token except the last (not yet fed back).

    ``temperature`` 0 is greedy; otherwise sampling at that temperature from the smallest set
    of tokens whose probability reaches ``top_p`` (nucleus sampling).
    """
    if not isinstance(input_ids, Tensor) or input_ids.dim() not in (1, 2):
        raise ValueError("input_ids must be a 1-D [T] or 2-D [B, T] tensor of token ids")
    if input_ids.shape[-1] == 0 and state is None:
        raise ValueError("the prompt is empty and no state was given: nothing to continue from")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(prefill_segments, bool) or not isinstance(prefill_segments, int) or prefill_segments < 1:
        raise ValueError(f"prefill_segments must be an int >= 1, got {prefill_segments!r}")
    single = input_ids.dim() == 1
    ids = input_ids[None] if single else input_ids
    ids = ids.to(model.embed.weight.device)
    N = model.config.segment_len

    # Prefill a few segments at a time, keeping only the last position's logits.
    logits = None
    if state is None:
        state = model.init_state(ids.shape[0])
    start = 0
    while start < ids.shape[1]:
        end = min(start + prefill_segments * N - state.buffered, ids.shape[1])
        out = model(ids[:, start:end], state, logits_to_keep=1)
        logits, state = out.logits[:, -1], out.state
        start = end
    if logits is None:
        raise ValueError("an empty prompt needs the logits of the last token; pass at least one token")

    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        token = _sample(logits.float(), temperature, top_p, generator)  # [B]
        if eos_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_id), token)
            finished |= token == eos_id
        yield token.item() if single else token
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        out = model(token[:, None], state, logits_to_keep=1)
        logits, state = out.logits[:, -1], out.state
    return state


def _sample(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """logits ``[B, V]`` -> token ids ``[B]``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep a token if the mass before it is below top_p (so the top token always stays)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
