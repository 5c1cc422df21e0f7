"""Where the memory read looks: the weight a query gives to chosen spans of the stream.

The memory read of paper eq. 7, ``A_mem = sigma(q) M / (sigma(q) z)``, is linear attention over
every token written so far: with the linear rule (eq. 8) it is exactly ``sum_t w_t v_t`` with

    w_t = sigma(q) . sigma(k_t) / sigma(q) . z,     z = sum of sigma(k_t) over the written tokens,

weights that sum to 1. (The delta rule, eq. 9, changes the values summed, not these weights.) So
``share(span) = sum_{t in span} w_t`` says how much of a query's read comes from those tokens: for
a passkey prompt, from the key sentence, against the haystack. Tokens of the open segment are not
in the memory yet (the local path sees them), so they carry no weight.

``read_shares`` streams ids through the model in whole pieces, keeps sum sigma(k) over each span
(from forward hooks on the key projections), and at each chosen position reads the query and the z
that position reads, exactly as the model does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..ops.naive import sigma


class _Projections:
    """Forward hooks on every layer's q and k projections, keeping the last call's outputs."""

    def __init__(self, model) -> None:
        self.q: dict[int, Tensor] = {}
        self.k: dict[int, Tensor] = {}
        self.handles = []
        for i, block in enumerate(model.blocks):
            attn = block.attn
            if not hasattr(attn, "gate"):
                raise ValueError(f"layer {i} has no compressive memory (not an Infini-attention layer)")
            if attn.update == "deltanet":  # its read has no normaliser: no weights that sum to 1
                raise ValueError(f"layer {i} uses the deltanet rule; read shares exist only for eq. 7's read")
            self.handles.append(attn.q_proj.register_forward_hook(self._keep(self.q, i, attn.n_heads)))
            self.handles.append(attn.k_proj.register_forward_hook(self._keep(self.k, i, attn.n_kv_heads)))

    @staticmethod
    def _keep(store: dict, i: int, heads: int):
        def hook(module, args, out):  # out [1, T, heads * D] -> [T, heads, D]
            store[i] = out[0].unflatten(-1, (heads, -1)).detach()

        return hook

    def stacked(self, store: dict, rows: slice) -> Tensor:  # -> [L, n, heads, D]
        return torch.stack([store[i][rows] for i in sorted(store)])

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def read_shares(
    model,
    ids: Tensor,
    spans: Mapping[str, tuple[int, int]],
    positions: Sequence[int],
    *,
    chunk_segments: int = 8,
) -> list[dict]:
    """The share of each span in the memory read of every layer and query head, at each position.

    Args:
        model: an ``InfiniTransformer`` (every layer Infini-attention).
        ids: ``[T]`` token ids, streamed from a fresh state.
        spans: name -> ``(start, stop)`` token ranges, in the memory before the first position
            (within its complete segments).
        positions: token indices to measure at, increasing (each is fed alone, so its read is exact).

    Returns one dict per (position, layer, head): ``{"position", "layer", "head", "gate",
    "<name>_share" for each span}``; a share is 0 when the memory is still empty.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D [T], got shape {tuple(ids.shape)}")
    T = ids.shape[0]
    positions = list(positions)
    if not positions or any(not 0 <= p < T for p in positions) or positions != sorted(set(positions)):
        raise ValueError(f"positions must be increasing token indices in [0, {T}), got {positions}")
    N = model.config.segment_len
    written = (positions[0] // N) * N  # tokens in the memory when the first position reads it
    for name, (lo, hi) in spans.items():
        if not 0 <= lo <= hi <= written:
            raise ValueError(
                f"span {name!r} = ({lo}, {hi}) must lie in [0, {written}]: the tokens written to memory "
                f"(whole segments of {N}) before position {positions[0]}"
            )
    chunk = chunk_segments * N
    ids = ids.to(next(model.parameters()).device)
    hooks = _Projections(model)
    state = model.init_state(1)
    # sum of sigma(k) over each span's tokens: [L, Hkv, D], float64 (shaped like the stacked z)
    empty = torch.stack([layer.z[0] for layer in state.layers]).double().zero_()
    sums = {name: empty.clone() for name in spans}

    def feed(start: int, stop: int) -> None:
        nonlocal state
        while start < stop:
            end = min(stop, (start // chunk + 1) * chunk)
            state = model(ids[start:end][None], state, logits_to_keep=1).state
            for name, (lo, hi) in spans.items():
                a, b = max(lo, start), min(hi, end)
                if a < b:
                    k = hooks.stacked(hooks.k, slice(a - start, b - start))  # [L, n, Hkv, D]
                    sums[name] += sigma(k.double()).sum(1)
            start = end

    gates = [torch.sigmoid(block.attn.gate.detach().float()).tolist() for block in model.blocks]
    rows = []
    done = 0
    try:
        for p in positions:
            feed(done, p)
            z = torch.stack([layer.z[0] for layer in state.layers]).double()  # [L, Hkv, D]: what p reads
            feed(p, p + 1)
            done = p + 1
            q = sigma(hooks.stacked(hooks.q, slice(-1, None))[:, 0].double())  # [L, H, D]
            L, H, _ = q.shape
            Hkv = z.shape[1]
            q = q.unflatten(1, (Hkv, H // Hkv))  # [L, Hkv, G, D]: query head h = j * G + g reads head j
            total = torch.einsum("ljgd,ljd->ljg", q, z).flatten(1)  # [L, H]
            mass = {name: torch.einsum("ljgd,ljd->ljg", q, s).flatten(1) for name, s in sums.items()}
            for l in range(L):
                for h in range(H):
                    row = {"position": p, "layer": l, "head": h, "gate": gates[l][h]}
                    for name, m in mass.items():
                        read = float(total[l, h])  # 0 while nothing is written
                        row[f"{name}_share"] = float(m[l, h]) / read if read else 0.0
                    rows.append(row)
    finally:
        hooks.close()
    return rows


__all__ = ["read_shares"]
