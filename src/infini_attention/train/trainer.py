"""The training loop: packed rows of L tokens, full BPTT through the memory, AdamW, checkpoints.

Each step takes one batch ``[B, L]`` from the ``SequenceSampler`` and runs one forward pass over all
L tokens; the model cuts it into L/N segments internally and, by default, backpropagates through
the memory across all of them (the paper's full BPTT). ``[train] bptt = k`` truncates every k
segments; ``checkpoint_segments`` recomputes each segment in the backward pass.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..models import InfiniTransformer
from . import checkpoint as ckpt
from .config import RunConfig
from .metrics import MetricsLog
from .runtime import autocast, evaluate, gate_stats, pick_device
from .schedule import Schedule, build_optimizer


def _check_resumable(config: RunConfig, saved: dict, model_config: dict) -> None:
    """The data and model of a resumed run must be those of the checkpoint."""
    if saved.get("model") != model_config:
        diff = sorted(k for k in model_config if saved.get("model", {}).get(k) != model_config[k])
        raise ValueError(
            f"cannot resume: [model] differs from the checkpoint's ({', '.join(diff) or 'keys'}); "
            "use another --out to start a new run"
        )
    old = saved.get("run", {}).get("data", {})
    now = config.to_dict()["data"]
    diff = [k for k in now if k != "cache_dir" and old.get(k) != now[k]]
    if diff:
        raise ValueError(
            f"cannot resume: [data] {diff[0]} differs from the checkpoint's ({old.get(diff[0])!r} -> "
            f"{now[diff[0]]!r}); use another --out to start a new run"
        )


def _prepare(config: RunConfig):
    from ..data.prepare import prepare_data

    d = config.data
    return prepare_data(
        d.corpus,
        tokenizer=d.tokenizer,
        vocab_size=d.vocab_size,
        cache_dir=d.cache_dir,
        eval_fraction=d.eval_fraction,
        text_field=d.text_field,
    )


def train(
    config: RunConfig,
    *,
    out_dir: str | Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train as ``config`` says; returns the final checkpoint folder.

    ``out_dir`` defaults to ``[train] out_dir``. ``max_steps`` stops after that optimiser step (the
    schedule still spans ``[train] max_steps``, so a run cut short and resumed is the same run).
    ``resume`` continues from ``<out_dir>/latest`` bit-exactly (same config, same device).
    ``progress``: show a tqdm bar (None: when stderr is a terminal).
    """
    import json

    from tqdm.auto import tqdm

    from ..data.packing import SequenceSampler
    from ..pretrained import load_weights

    tc = config.train
    out_dir = Path(out_dir if out_dir is not None else tc.out_dir or "runs/train")
    stop = tc.max_steps if max_steps is None else max_steps
    if isinstance(stop, bool) or not isinstance(stop, int) or stop <= 0:
        raise ValueError(f"max_steps must be a positive int, got {stop!r}")
    device = pick_device(tc.device)
    found = ckpt.latest_checkpoint(out_dir) if out_dir.is_dir() else None
    if resume and found is None:
        raise FileNotFoundError(f"nothing to resume: {out_dir} holds no checkpoint")
    if not resume and found is not None:
        raise ValueError(
            f"{out_dir} already holds a training run ({found.name}); pass --resume or another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale(out_dir)

    data = _prepare(config)
    model_config = config.model_config(data.tokenizer.vocab_size)
    if found is not None:
        saved = json.loads((found / "config.json").read_text(encoding="utf-8"))
        _check_resumable(config, saved, model_config.to_dict())
        if (found / "tokenizer.json").read_text(encoding="utf-8") != _tokenizer_json(data.tokenizer):
            raise ValueError(f"cannot resume: the prepared tokenizer differs from {found / 'tokenizer.json'}")

    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    model = InfiniTransformer(model_config).to(device)
    optimizer = build_optimizer(model, config.optim)
    schedule = Schedule(optimizer, config.optim, tc.max_steps)
    N = model_config.segment_len
    sampler = SequenceSampler(data.train, config.data.seq_len, N, tc.batch_size, tc.seed)
    step, tokens_seen = 0, 0
    if found is not None:
        load_weights(model, found / "model.safetensors")
        state = ckpt.load_trainer_state(found, optimizer)
        sampler.load_state_dict(state["sampler"])
        step, tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        log(f"resuming from {found} (step {step})")
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"model: {n_params / 1e6:.2f}M parameters, {model_config.n_layers} layers, d_model "
        f"{model_config.d_model}, vocab {model_config.vocab_size}; data: {data.train.num_tokens:,} train "
        f"tokens in {sampler.num_rows} rows of {config.data.seq_len} ({config.data.seq_len // N} segments "
        f"of {N}); device {device}"
    )
    if step >= stop:
        log(f"already at step {step} (stop at {stop}): nothing to train")
        return found

    run_dict = config.to_dict()
    run_dict["train"]["out_dir"] = str(out_dir)  # where this run actually went (--out)
    metrics = MetricsLog(out_dir, start_step=step, tensorboard=tc.tensorboard)
    clip = config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
    bar = tqdm(total=stop, initial=step, unit="step", disable=(None if progress is None else not progress))
    say = tqdm.write if not bar.disable else log
    last_saved, last_row = None, None
    window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0  # since the last logged row
    model.train()
    try:
        while step < stop:
            t0 = time.perf_counter()
            lrs = schedule.apply(step)
            batch = sampler.next_batch().to(device)
            with autocast(config, device):
                out = model(
                    batch.input_ids,
                    None,  # a fresh memory per row; under autocast it takes autocast's dtype
                    batch.labels,
                    pad_mask=batch.pad_mask,
                    doc_start=batch.doc_start,
                    detach_every=tc.detach_every,
                    checkpoint_segments=tc.checkpoint_segments,
                )
            loss = out.loss
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise RuntimeError(
                    f"training diverged: loss is {loss_value} at step {step + 1}; lower [optim] lr or gate_lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            optimizer.step()
            step += 1
            n_tok = batch.num_tokens  # real tokens, padding left out
            tokens_seen += n_tok
            window_loss, window_n = window_loss + loss_value, window_n + 1
            window_tokens, window_time = window_tokens + n_tok, window_time + time.perf_counter() - t0

            gates = gate_stats(model)
            tps = window_tokens / window_time if window_time > 0 else 0.0  # training only: no eval, no saves
            bar.update(1)
            spread = f"{gates['gate_min']:.2f}..{gates['gate_max']:.2f}"
            bar.set_postfix_str(f"loss {loss_value:.3f} | {tps:,.0f} tok/s | gates {spread}")

            final = step == stop
            do_eval = tc.eval_tokens > 0 and ((tc.eval_every and step % tc.eval_every == 0) or final)
            if step % tc.log_every == 0 or do_eval or final:
                row = {
                    "step": step,
                    "loss": window_loss / window_n,
                    "lr": lrs.get("decay", lrs.get("no_decay")),
                    "gate_lr": lrs.get("gates"),
                    "tokens_per_s": tps,
                    "grad_norm": grad_norm,
                    **gates,
                }
                if do_eval:
                    result = evaluate(
                        model,
                        data.eval,
                        tc.eval_tokens,
                        chunk_len=config.data.seq_len,
                    )
                    if result is not None:
                        row.update(eval_loss=result["eval_loss"], eval_ppl=result["eval_ppl"])
                        say(
                            f"step {step}: eval loss {result['eval_loss']:.4f}, ppl {result['eval_ppl']:.2f} "
                            f"({result['eval_tokens']:,} tokens)"
                        )
                metrics.write(row)
                if bar.disable and not do_eval:
                    say(
                        f"step {step}/{stop}: loss {row['loss']:.4f}, lr {row['lr']:.2e}, {tps:,.0f} tok/s, "
                        f"gates {gates['gate_min']:.2f}..{gates['gate_max']:.2f}"
                    )
                window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0
                last_row = row
            if final or (tc.save_every and step % tc.save_every == 0):
                last_saved = ckpt.save_checkpoint(
                    out_dir,
                    step,
                    model=model,
                    tokenizer=data.tokenizer,
                    run_config=run_dict,
                    optimizer=optimizer,
                    trainer_state={
                        "sampler": sampler.state_dict(),
                        "schedule": schedule.state_dict(),
                        "tokens_seen": tokens_seen,
                        "metrics": last_row,
                    },
                    keep=tc.keep_checkpoints,
                )
    finally:
        bar.close()
        metrics.close()
    log(f"trained {step} steps ({tokens_seen:,} tokens); checkpoint: {last_saved}")
    return last_saved


def _tokenizer_json(tokenizer) -> str:
    """What ``tokenizer.save`` writes, for comparing with a checkpoint's file."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        tokenizer.save(path)
        return path.read_text(encoding="utf-8")
