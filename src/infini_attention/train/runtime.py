"""Helpers of the training loop: device choice, autocast, gate statistics, periodic evaluation."""

from __future__ import annotations

import contextlib
import math

import torch

from ..models import InfiniTransformer
from .config import RunConfig


def pick_device(spec: str) -> torch.device:
    from ..pretrained import check_device

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return check_device(spec)
    except ValueError as err:
        raise ValueError(f"[train] device: {err} (use auto, cpu, cuda or cuda:N)") from None


def autocast(config: RunConfig, device: torch.device):
    if config.train.autocast == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def gate_stats(model: InfiniTransformer) -> dict[str, float]:
    """Mean, min and max of sigmoid(gate) over every layer and head."""
    g = torch.sigmoid(torch.cat([p.detach().float().flatten() for p in model.gates()]))
    return {"gate_mean": g.mean().item(), "gate_min": g.min().item(), "gate_max": g.max().item()}


@torch.no_grad()
def evaluate(model: InfiniTransformer, shards, max_tokens: int, *, chunk_len: int) -> dict | None:
    """Mean NLL and perplexity over the first ``max_tokens`` predictions of the eval documents, each
    document streamed from its start with the model's memory carried across chunks (in float32,
    also when training uses bf16 autocast)."""
    from ..eval.perplexity import stream_nll

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(shards.num_docs):
            if count >= max_tokens:
                break
            doc = shards.doc(i)
            take = min(len(doc), max_tokens - count + 1)
            if take < 2:
                continue
            nll = stream_nll(model, doc[:take], chunk_len=chunk_len)
            total += float(nll.sum())
            count += nll.numel()
    finally:
        model.train(was_training)
    if not count:
        return None
    mean = total / count
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 700.0)), "eval_tokens": count}
