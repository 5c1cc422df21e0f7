"""A checkpointed training step, eager against ``compile_segments()`` (torch.compile), side by side.

The step the long passkey stages take (``[train] checkpoint_segments = true``): forward over
``--batch`` rows of ``--tokens`` tokens, loss on the last 8, backward. Both models hold the same
weights; the repeats alternate eager / compiled so a noisy machine slows both alike. The compiled
model's first (warm-up) step includes the compilation, reported on its own. Also prints the largest
loss and gradient differences, so a fast wrong answer cannot pass for a speed-up.

    python benchmarks/compile_step.py --model passkey --tokens 32768 --batch 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from infini_attention.pretrained import load_pretrained


def step(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = model(ids, labels=labels, checkpoint_segments=True, logits_to_keep=8)
    out.loss.backward()
    return time.perf_counter() - t0, out.loss.detach(), [p.grad for p in model.parameters()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="passkey", help="checkpoint folder or shipped name")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per row")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    eager, _ = load_pretrained(args.model)
    compiled, _ = load_pretrained(args.model)
    compiled.compile_segments()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, eager.config.vocab_size, (args.batch, args.tokens), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.batch} x {args.tokens} "
        f"tokens per step, N = {eager.config.segment_len}, checkpoint_segments"
    )
    step(eager, ids, labels)
    warm, _, _ = step(compiled, ids, labels)
    print(f"compiled warm-up step (compilation included): {warm:.1f} s")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        dt, loss_e, grads_e = step(eager, ids, labels)
        times["eager"].append(dt)
        dt, loss_c, grads_c = step(compiled, ids, labels)
        times["compiled"].append(dt)
    loss_diff = abs(float(loss_e - loss_c))
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(grads_e, grads_c, strict=True))
    print(f"max |eager - compiled|: loss {loss_diff:.1e}, gradients {grad_diff:.1e}")
    tokens = args.batch * args.tokens
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        runs = ", ".join(f"{t:.2f}" for t in v)
        print(f"{k:9s}: median {med[k]:.2f} s per step ({runs}), {tokens / med[k]:,.0f} tokens/s")
    print(f"compiled / eager speed: {med['eager'] / med['compiled']:.2f}x")


if __name__ == "__main__":
    main()
