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
    """Mean, min and max of sigmoid(gate) over every layer and head. Under FSDP2 the gates are
    sharded ``DTensor`` s, gathered whole here (a collective: every rank must call it)."""
    whole = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.gates()]
    if not whole:  # a gateless baseline (local, transformer-xl, full, rmt)
        return {}
    g = torch.sigmoid(torch.cat([p.detach().float().flatten() for p in whole]))
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


@torch.no_grad()
def evaluate_passkey(
    model: InfiniTransformer, tokenizer, seq_len: int, batch_size: int, seed: int, rows: int = 32
) -> float:
    """Share of ``rows`` held-out passkey prompts of ``seq_len`` tokens whose answer greedy decoding
    reproduces (teacher-forced argmax, see ``data.passkey_task``). The prompts are the same at every
    evaluation and never trained on (their own seed stream)."""
    from ..data.passkey_task import PasskeySampler, answer_span, retrieved

    sampler = PasskeySampler(
        tokenizer, seq_len, model.config.segment_len, batch_size, seed + 1_000_003, min_len=seq_len
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = done = 0
    try:
        while done < rows:
            batch = sampler.next_batch().to(device)
            out = model(
                batch.input_ids, None, pad_mask=batch.pad_mask, logits_to_keep=answer_span(batch.labels)
            )
            hits += int(retrieved(out.logits, batch.labels).sum())
            done += batch.input_ids.shape[0]
    finally:
        model.train(was_training)
    return hits / done


@torch.no_grad()
def evaluate_summary(model: InfiniTransformer, sampler, max_tokens: int) -> dict:
    """Mean cross-entropy of the summary (+EOS) tokens of ``sampler``'s documents, taken in order,
    a batch at a time, until at least ``max_tokens`` summary tokens are scored (or every document
    is): the same rows at every evaluation, so the numbers compare across steps."""
    from ..data.packing import IGNORE
    from ..data.passkey_task import answer_span

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for first in range(0, sampler.num_docs, sampler.batch_size):
            if count >= max_tokens:
                break
            indices = list(range(first, min(first + sampler.batch_size, sampler.num_docs)))
            batch = sampler.batch(indices).to(device)
            keep = answer_span(batch.labels)
            out = model(batch.input_ids, None, pad_mask=batch.pad_mask, logits_to_keep=keep)
            labels = batch.labels[:, -keep:]
            nll = torch.nn.functional.cross_entropy(
                out.logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            total += float(nll)
            count += int((labels != IGNORE).sum())
    finally:
        model.train(was_training)
    return {"eval_summary_loss": total / max(count, 1), "eval_summary_tokens": count}
