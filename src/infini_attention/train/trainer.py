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
from .runtime import autocast, evaluate, evaluate_passkey, gate_stats, pick_device
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


def _prepare(config: RunConfig, tokenizer: str | None):
    from ..data.prepare import prepare_data

    d = config.data
    return prepare_data(
        d.corpus,
        tokenizer=tokenizer,
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

    from ..data.copy_task import CopySampler
    from ..data.packing import SequenceSampler
    from ..data.passkey_task import PasskeySampler, answer_span, only_answer, retrieved
    from ..data.tokenizer import Tokenizer
    from ..pretrained import load_weights, read_model_config, resolve_checkpoint

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

    d = config.data
    init_folder = resolve_checkpoint(tc.init_from) if tc.init_from else None
    tokenizer_file = d.tokenizer
    if tokenizer_file is None and init_folder is not None:
        tokenizer_file = str(init_folder / "tokenizer.json")  # fine-tuning keeps the model's tokenizer
    # the corpus is read for language modelling, and to train a tokenizer when none is given
    data = (
        _prepare(config, tokenizer_file) if d.task == "lm" or d.lm_every or tokenizer_file is None else None
    )
    tokenizer = data.tokenizer if data is not None else Tokenizer.from_file(tokenizer_file)
    base = read_model_config(init_folder) if init_folder is not None else None
    model_config = config.model_config(tokenizer.vocab_size, base)
    if found is not None:
        saved = json.loads((found / "config.json").read_text(encoding="utf-8"))
        _check_resumable(config, saved, model_config.to_dict())
        if (found / "tokenizer.json").read_text(encoding="utf-8") != _tokenizer_json(tokenizer):
            raise ValueError(f"cannot resume: the prepared tokenizer differs from {found / 'tokenizer.json'}")

    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    model = InfiniTransformer(model_config).to(device)
    if init_folder is not None and found is None:
        load_weights(model, init_folder / "model.safetensors")
        log(f"starting from {init_folder}")
    optimizer = build_optimizer(model, config.optim)
    schedule = Schedule(optimizer, config.optim, tc.max_steps)
    N = model_config.segment_len
    samplers = {}
    if d.task == "passkey":
        samplers["sampler"] = PasskeySampler(
            tokenizer,
            d.seq_len,
            N,
            tc.batch_size,
            tc.seed,
            min_len=d.passkey_min_len or None,
            copy_targets=d.passkey_copy_targets,
            word_keys=d.passkey_word_keys,
        )
    if d.copy_every:
        eos = getattr(tokenizer, "eos_id", None)
        samplers["copy_sampler"] = CopySampler(
            model_config.vocab_size,
            d.copy_seq_len or d.seq_len,
            N,
            tc.batch_size,
            tc.seed,
            min_period=d.copy_min_period,
            max_period=d.copy_max_period or None,
            exclude=(0,) if eos is None else (0, eos),  # never the pad / end-of-text ids
        )
    if data is not None and (d.task == "lm" or d.lm_every):
        samplers["sampler" if d.task == "lm" else "lm_sampler"] = SequenceSampler(
            data.train, d.seq_len, N, tc.batch_size, tc.seed
        )
    step, tokens_seen = 0, 0
    if found is not None:
        load_weights(model, found / "model.safetensors")
        state = ckpt.load_trainer_state(found, optimizer)
        for name, sampler in samplers.items():
            sampler.load_state_dict(state[name])
        step, tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        log(f"resuming from {found} (step {step})")
    n_params = sum(p.numel() for p in model.parameters())
    if d.task == "lm":
        what = f"{data.train.num_tokens:,} train tokens in {samplers['sampler'].num_rows} rows of {d.seq_len}"
    else:
        mix = f", language modelling every {d.lm_every} steps" if d.lm_every else ""
        what = f"passkey prompts of {samplers['sampler'].min_len}-{d.seq_len} tokens{mix}"
    log(
        f"model: {n_params / 1e6:.2f}M parameters, {model_config.n_layers} layers, d_model "
        f"{model_config.d_model}, vocab {model_config.vocab_size}; data: {what} (segments of {N}); "
        f"device {device}"
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
    window_hits, window_rows = 0, 0  # passkey rows retrieved (teacher-forced argmax) since then
    window_copy: list[float] = []  # losses of the copy-task steps since then
    lm_eval = tc.eval_tokens > 0 and data is not None
    can_eval = lm_eval or d.task == "passkey"  # passkey fine-tuning always checks retrieval
    model.train()
    try:
        while step < stop:
            t0 = time.perf_counter()
            lrs = schedule.apply(step)
            source = _source(d, step)
            batch = samplers[source].next_batch().to(device)
            passkey_step = d.task == "passkey" and source == "sampler"
            # passkey rows: logits for the answer only (unless the key's mention is a target too)
            keep = answer_span(batch.labels) if passkey_step and not d.passkey_copy_targets else 0
            with autocast(config, device):
                out = model(
                    batch.input_ids,
                    None,  # a fresh memory per row; under autocast it takes autocast's dtype
                    batch.labels,
                    pad_mask=batch.pad_mask,
                    doc_start=batch.doc_start,
                    detach_every=tc.detach_every,
                    checkpoint_segments=tc.checkpoint_segments,
                    logits_to_keep=keep,
                )
            if passkey_step:
                answer = only_answer(batch.labels) if d.passkey_copy_targets else batch.labels
                window_hits += int(retrieved(out.logits.detach(), answer).sum())
                window_rows += batch.input_ids.shape[0]
            loss = out.loss
            loss_value = loss.item()
            if source == "copy_sampler":
                window_copy.append(loss_value)
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
            do_eval = can_eval and ((tc.eval_every and step % tc.eval_every == 0) or final)
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
                if window_rows:
                    row["passkey_acc"] = window_hits / window_rows
                if window_copy:
                    row["copy_loss"] = sum(window_copy) / len(window_copy)
                if do_eval and lm_eval:
                    result = evaluate(model, data.eval, tc.eval_tokens, chunk_len=d.seq_len)
                    if result is not None:
                        row.update(eval_loss=result["eval_loss"], eval_ppl=result["eval_ppl"])
                        say(
                            f"step {step}: eval loss {result['eval_loss']:.4f}, ppl {result['eval_ppl']:.2f} "
                            f"({result['eval_tokens']:,} tokens)"
                        )
                if do_eval and d.task == "passkey":
                    acc = evaluate_passkey(model, tokenizer, d.seq_len, tc.batch_size, tc.seed)
                    row["eval_passkey_acc"] = acc
                    say(
                        f"step {step}: passkey retrieval, held-out {d.seq_len}-token prompts {100 * acc:.1f}%"
                    )
                metrics.write(row)
                if bar.disable and not do_eval:
                    acc = f", passkey {100 * row['passkey_acc']:.0f}%" if "passkey_acc" in row else ""
                    acc += f", copy loss {row['copy_loss']:.3f}" if "copy_loss" in row else ""
                    say(
                        f"step {step}/{stop}: loss {row['loss']:.4f}{acc}, lr {row['lr']:.2e}, "
                        f"{tps:,.0f} tok/s, "
                        f"gates {gates['gate_min']:.2f}..{gates['gate_max']:.2f}"
                    )
                window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0
                window_hits, window_rows = 0, 0
                window_copy = []
                last_row = row
            if final or (tc.save_every and step % tc.save_every == 0):
                last_saved = ckpt.save_checkpoint(
                    out_dir,
                    step,
                    model=model,
                    tokenizer=tokenizer,
                    run_config=run_dict,
                    optimizer=optimizer,
                    trainer_state={
                        **{name: sampler.state_dict() for name, sampler in samplers.items()},
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


def _source(d, step: int) -> str:
    """Which sampler serves optimiser step ``step`` (0-based): every ``copy_every``-th step the copy
    task, else every ``lm_every``-th step language modelling, else the main task."""
    if d.copy_every and (step + 1) % d.copy_every == 0:
        return "copy_sampler"
    if d.lm_every and (step + 1) % d.lm_every == 0:
        return "lm_sampler"
    return "sampler"


def _tokenizer_json(tokenizer) -> str:
    """What ``tokenizer.save`` writes, for comparing with a checkpoint's file."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        tokenizer.save(path)
        return path.read_text(encoding="utf-8")
