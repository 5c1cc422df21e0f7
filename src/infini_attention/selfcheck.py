"""``infini check``: the fast op against the reference on the user's own machine and device."""

from __future__ import annotations

import torch

from .ops import infini_attention, infini_attention_naive
from .ops.checks import UPDATE_RULES

# (B, T, H, Hkv, Dk, Dv, N, W): ragged tails, T < N, GQA groups of 1, 2 and 3, Dk != Dv; W the
# local-overlap option (0: the paper)
CASES = [
    (2, 37, 6, 2, 16, 8, 8, 0),
    (1, 5, 3, 3, 8, 8, 16, 0),
    (2, 70, 4, 4, 8, 12, 16, 0),
    (1, 64, 4, 1, 8, 8, 16, 0),
    (2, 37, 6, 2, 16, 8, 8, 3),
    (1, 70, 4, 2, 8, 12, 16, 16),
]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def run_selfcheck(device: str, seed: int) -> bool:
    """Print one line per case and return whether every check passed (float64, tol 1e-9)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    gen = torch.Generator().manual_seed(seed)
    ok = True
    print(f"{'case':<32} {'update':<8} {'output':>9} {'state':>9} {'grads':>9} {'split':>9}")
    for B, T, H, Hkv, Dk, Dv, N, W in CASES:
        for update in UPDATE_RULES:
            shapes = [(B, T, H, Dk), (B, T, Hkv, Dk), (B, T, Hkv, Dv), (H,)]
            inputs = [torch.randn(s, generator=gen, dtype=torch.float64).to(dev) for s in shapes]
            errs = []
            results = []
            for op in (infini_attention, infini_attention_naive):
                xs = [x.clone().requires_grad_() for x in inputs]
                o, st = op(*xs, segment_len=N, update=update, overlap=W)
                cot = torch.ones_like(o) / o.numel()
                (o * cot).sum().add(st.M.sum()).backward()
                results.append((o.detach(), st.M.detach(), [x.grad for x in xs]))
            (o_f, m_f, g_f), (o_n, m_n, g_n) = results
            errs = [_max_err(o_f, o_n), _max_err(m_f, m_n), max(map(_max_err, g_f, g_n))]
            cut = int(torch.randint(1, T, (1,), generator=gen)) if T > 1 else 1
            a, s = infini_attention(
                *[x[:, :cut] for x in inputs[:3]], inputs[3], segment_len=N, update=update, overlap=W
            )
            b, s = infini_attention(
                *[x[:, cut:] for x in inputs[:3]],
                inputs[3],
                segment_len=N,
                update=update,
                overlap=W,
                initial_state=s,
            )
            errs.append(max(_max_err(torch.cat([a, b], 1), o_f), _max_err(s.M, m_f)))
            passed = all(e < 1e-9 for e in errs)
            ok &= passed
            name = f"B{B}-T{T}-H{H}-Hkv{Hkv}-Dk{Dk}-Dv{Dv}-N{N}" + (f"-W{W}" if W else "")
            cells = " ".join(f"{e:9.1e}" for e in errs)
            print(f"{name:<32} {update:<8} {cells}  {'ok' if passed else 'FAIL'}")
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return ok
