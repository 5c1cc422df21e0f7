"""The training loop: packed rows of L tokens, full BPTT through the memory, AdamW, checkpoints.

Each step takes one batch ``[B, L]`` from the ``SequenceSampler`` and runs one forward pass over all
L tokens; the model cuts it into L/N segments internally and, by default, backpropagates through
the memory across all of them (the paper's full BPTT). ``[train] bptt = k`` truncates every k
segments; ``checkpoint_segments`` recomputes each segment in the backward pass.

Under ``torchrun`` (``[train] dist``, ``train/distributed.py``) every process runs this loop on its
own device with its share of each global batch of ``[train] batch_size`` rows; rank 0 alone logs
and writes checkpoints, in the single-process format.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..models import InfiniTransformer
from . import checkpoint as ckpt
from . import distributed
from .config import DataConfig, RunConfig
from .metrics import MetricsLog
from .runtime import autocast, evaluate, evaluate_passkey, evaluate_summary, gate_stats
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
    # a key newer than the checkpoint (e.g. summary_*) had its default value when that was written
    defaults = dataclasses.asdict(DataConfig())
    diff = [k for k in now if k != "cache_dir" and old.get(k, defaults.get(k)) != now[k]]
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
    ``resume`` continues from ``<out_dir>/latest`` bit-exactly (same config, same device, same
    world size; on another world size the data order is the same, the sums' rounding is not).
    ``progress``: show a tqdm bar (None: when stderr is a terminal).

    Under ``torchrun`` it starts (and ends) the process group ``[train] dist`` asks for; every rank
    returns the final checkpoint's folder, which rank 0 wrote.
    """
    dist, device = distributed.setup(config.train.dist, config.train.device)
    try:
        return _train(config, dist, device, out_dir, max_steps, resume, progress, log)
    finally:
        distributed.teardown(dist)


def _train(
    config: RunConfig,
    dist: distributed.Dist,
    device: torch.device,
    out_dir: str | Path | None,
    max_steps: int | None,
    resume: bool,
    progress: bool | None,
    log: Callable[[str], None],
) -> Path:
    import json

    from tqdm.auto import tqdm

    from ..data.copy_task import CopySampler
    from ..data.packing import IGNORE, SequenceSampler
    from ..data.passkey_task import PasskeySampler, answer_span, only_answer, retrieved
    from ..data.summary_task import SummarySampler, load_summary_docs
    from ..data.tokenizer import Tokenizer
    from ..pretrained import load_weights, read_model_config, resolve_checkpoint

    tc = config.train
    out_dir = Path(out_dir if out_dir is not None else tc.out_dir or "runs/train")
    stop = tc.max_steps if max_steps is None else max_steps
    if isinstance(stop, bool) or not isinstance(stop, int) or stop <= 0:
        raise ValueError(f"max_steps must be a positive int, got {stop!r}")
    if tc.batch_size % dist.world_size:
        raise ValueError(
            f"[train] batch_size ({tc.batch_size}) is the global batch: it must be a multiple of the "
            f"{dist.world_size} processes"
        )
    if tc.compile and dist.world_size > 1:
        raise ValueError(
            "[train] compile = true is untried with several processes: leave it off under torchrun"
        )
    rows_per_rank = tc.batch_size // dist.world_size
    if not dist.is_main:
        log = _quiet  # rank 0 speaks for the run
    found = ckpt.latest_checkpoint(out_dir) if out_dir.is_dir() else None
    if resume and found is None:
        raise FileNotFoundError(f"nothing to resume: {out_dir} holds no checkpoint")
    if not resume and found is not None:
        raise ValueError(
            f"{out_dir} already holds a training run ({found.name}); pass --resume or another --out"
        )
    if dist.is_main:  # the other ranks never write into out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale(out_dir)

    d = config.data
    init_folder = resolve_checkpoint(tc.init_from) if tc.init_from else None
    tokenizer_file = d.tokenizer
    if tokenizer_file is None and init_folder is not None:
        tokenizer_file = str(init_folder / "tokenizer.json")  # fine-tuning keeps the model's tokenizer
    # the corpus is read for language modelling, for book-text passkey filler, and to train a
    # tokenizer when none is given
    book_filler = d.task == "passkey" and d.passkey_book_filler > 0
    data = (
        _prepare_in_turn(config, tokenizer_file, dist)
        if d.task == "lm" or d.lm_every or book_filler or tokenizer_file is None
        else None
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
    torch.manual_seed(tc.seed)  # the same on every rank: the same initial weights
    model = InfiniTransformer(model_config).to(device)
    if init_folder is not None and found is None:
        # an option the starting model lacks brings its own freshly initialised weights
        added = model_config.write_strength and not base.write_strength
        fresh = [n for n in model.state_dict() if ".write_proj." in n] if added else []
        load_weights(model, init_folder / "model.safetensors", fresh=fresh)
        log(f"starting from {init_folder}" + (" (write strengths newly initialised)" if fresh else ""))
    if found is not None:  # before wrapping: FSDP2 then shards the loaded weights
        load_weights(model, found / "model.safetensors")
    if tc.compile:
        model.compile_segments()
    net = distributed.wrap(model, dist, device)  # what the step calls; `model` stays the InfiniTransformer
    optimizer = build_optimizer(model, config.optim)  # on the wrapped (under FSDP2: sharded) parameters
    schedule = Schedule(optimizer, config.optim, tc.max_steps)
    N = model_config.segment_len
    samplers = {}
    if d.task == "passkey":
        samplers["sampler"] = PasskeySampler(
            tokenizer,
            d.seq_len,
            N,
            rows_per_rank,
            tc.seed,
            min_len=d.passkey_min_len or None,
            copy_targets=d.passkey_copy_targets,
            word_keys=d.passkey_word_keys,
            repeat_keys=d.passkey_repeat_keys,
            cross_boundary=d.passkey_cross_boundary,
            book_filler=d.passkey_book_filler,
            books=data.train if book_filler else None,
            log_uniform=d.passkey_lengths == "log-uniform",
            rank=dist.rank,
            world_size=dist.world_size,
        )
    summary_eval = None  # task "summarize": the sampler whose rows the evaluation scores
    if d.task == "summarize":
        fields = (d.summary_document_field, d.summary_summary_field)
        max_input = d.summary_max_input_tokens or None
        samplers["sampler"] = SummarySampler(
            tokenizer,
            load_summary_docs(d.summary_data, d.summary_split, *fields),
            d.seq_len,
            N,
            rows_per_rank,
            tc.seed,
            max_input_tokens=max_input,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        if tc.eval_tokens:  # aclsum: the val split; a .jsonl file: its own documents (it has no split)
            eval_docs = load_summary_docs(d.summary_data, "val", *fields)
            # every rank scores the same rows (the evaluation runs alike on all, as passkey's does)
            summary_eval = SummarySampler(
                tokenizer, eval_docs, d.seq_len, N, tc.batch_size, tc.seed, max_input_tokens=max_input
            )
    if d.copy_every:
        eos = getattr(tokenizer, "eos_id", None)
        samplers["copy_sampler"] = CopySampler(
            model_config.vocab_size,
            d.copy_seq_len or d.seq_len,
            N,
            rows_per_rank,
            tc.seed,
            min_period=d.copy_min_period,
            max_period=d.copy_max_period or None,
            exclude=(0,) if eos is None else (0, eos),  # never the pad / end-of-text ids
            rank=dist.rank,
            world_size=dist.world_size,
        )
    if data is not None and (d.task == "lm" or d.lm_every):
        samplers["sampler" if d.task == "lm" else "lm_sampler"] = SequenceSampler(
            data.train, d.seq_len, N, rows_per_rank, tc.seed, rank=dist.rank, world_size=dist.world_size
        )
    step, tokens_seen = 0, 0
    if found is not None:
        # the samplers' states are global positions (rank 0's): any rank of any world size goes on
        # under FSDP2 every rank keeps its shard of the saved whole state
        load_optimizer = lambda s: distributed.load_optimizer_state(model, optimizer, s, dist)  # noqa: E731
        state = ckpt.load_trainer_state(found, optimizer, load_optimizer)
        for name, sampler in samplers.items():
            sampler.load_state_dict(state[name])
        step, tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        log(f"resuming from {found} (step {step})")
    n_params = sum(p.numel() for p in model.parameters())
    if d.task == "lm":
        what = f"{data.train.num_tokens:,} train tokens in {samplers['sampler'].num_rows} rows of {d.seq_len}"
    else:
        mix = f", language modelling every {d.lm_every} steps" if d.lm_every else ""
        if d.task == "summarize":
            source_name = "aclsum " + d.summary_split if d.summary_data == "aclsum" else d.summary_data
            n_docs = samplers["sampler"].num_docs
            what = f"{n_docs} documents to summarise ({source_name}) in rows of up to {d.seq_len} tokens{mix}"
        else:
            books = f", book-text filler in {d.passkey_book_filler:.0%} of rows" if book_filler else ""
            what = f"passkey prompts of {samplers['sampler'].min_len}-{d.seq_len} tokens{books}{mix}"
    where = f"device {device}"
    if dist.active:
        procs = f"{dist.world_size} process{'es' if dist.world_size > 1 else ''}"
        where = f"{dist.mode} over {procs} ({device.type}), {rows_per_rank} rows each"
    log(
        f"model: {n_params / 1e6:.2f}M parameters, {model_config.n_layers} layers, d_model "
        f"{model_config.d_model}, vocab {model_config.vocab_size}; data: {what} (segments of {N}); "
        f"{where}"
    )
    if step >= stop:
        log(f"already at step {step} (stop at {stop}): nothing to train")
        return found

    run_dict = config.to_dict()
    run_dict["train"]["out_dir"] = str(out_dir)  # where this run actually went (--out)
    run_dict["train"]["dist"] = dist.mode  # how it actually ran ("none" under torchrun becomes "ddp")
    metrics = MetricsLog(out_dir, start_step=step, tensorboard=tc.tensorboard) if dist.is_main else None
    clip = config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
    show = (None if progress is None else not progress) if dist.is_main else True
    bar = tqdm(total=stop, initial=step, unit="step", disable=show)
    say = tqdm.write if not bar.disable else log
    last_saved, last_row = None, None
    window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0  # since the last logged row
    window_hits, window_rows = 0, 0  # passkey rows retrieved (teacher-forced argmax) since then
    window_copy: list[float] = []  # losses of the copy-task steps since then
    lm_eval = tc.eval_tokens > 0 and data is not None
    passkey_eval = d.task == "passkey" and tc.eval_passkey_prompts > 0  # held-out retrieval
    can_eval = lm_eval or passkey_eval or summary_eval is not None
    net.train()
    try:
        while step < stop:
            t0 = time.perf_counter()
            lrs = schedule.apply(step)
            source = _source(d, step)
            batch = samplers[source].next_batch().to(device)
            passkey_step = d.task == "passkey" and source == "sampler"
            # passkey rows: logits for the answer only (unless the key's mention is a target too);
            # summary rows: from the first summary token on (the documents' logits are never scored)
            summary_step = d.task == "summarize" and source == "sampler"
            answer_only = (passkey_step and not d.passkey_copy_targets) or summary_step
            keep = answer_span(batch.labels) if answer_only else 0
            run = distributed.same_chunks(batch, dist) if dist.mode == "fsdp" else batch
            with autocast(config, device):
                out = net(
                    run.input_ids,
                    None,  # a fresh memory per row; under autocast it takes autocast's dtype
                    run.labels,
                    pad_mask=run.pad_mask,
                    doc_start=run.doc_start,
                    detach_every=tc.detach_every,
                    checkpoint_segments=tc.checkpoint_segments,
                    logits_to_keep=keep,
                )
            hits = rows = 0
            if passkey_step:
                answer = only_answer(batch.labels) if d.passkey_copy_targets else batch.labels
                rows = batch.input_ids.shape[0]  # (under FSDP2 a filler row may follow them)
                hits = int(retrieved(out.logits[:rows].detach(), answer).sum())
            loss = out.loss
            n_tok = batch.num_tokens  # real tokens, padding left out
            if dist.active:
                # each rank's batch is its share of one global batch: weigh the ranks' mean losses by
                # their labelled tokens, as one process's mean over the whole batch does
                labelled = int((batch.labels != IGNORE).sum())
                local = [loss.item() * labelled, labelled, n_tok, hits, rows]
                sums = distributed.all_sum(dist, local, device)
                total, all_labelled = sums[0], max(sums[1], 1.0)
                n_tok, hits, rows = int(sums[2]), int(sums[3]), int(sums[4])
                loss_value = total / all_labelled
                # DDP and FSDP2 average the ranks' gradients: this weight makes that average the
                # gradient of the global mean loss
                loss = loss * (labelled * dist.world_size / all_labelled)
            else:
                loss_value = loss.item()
            window_hits, window_rows = window_hits + hits, window_rows + rows
            if source == "copy_sampler":
                window_copy.append(loss_value)
            if not math.isfinite(loss_value):
                raise RuntimeError(
                    f"training diverged: loss is {loss_value} at step {step + 1}; lower [optim] lr or gate_lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # the global norm: DDP's gradients are already averaged; FSDP2's norm of the sharded
            # gradients is reduced over the ranks (a replicated DTensor)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            optimizer.step()
            step += 1
            tokens_seen += n_tok  # all ranks together
            window_loss, window_n = window_loss + loss_value, window_n + 1
            window_tokens, window_time = window_tokens + n_tok, window_time + time.perf_counter() - t0

            gates = gate_stats(model)  # under FSDP2 a collective: every rank computes it
            tps = window_tokens / window_time if window_time > 0 else 0.0  # training only: no eval, no saves
            bar.update(1)
            spread = f" | gates {gates['gate_min']:.2f}..{gates['gate_max']:.2f}" if gates else ""
            bar.set_postfix_str(f"loss {loss_value:.3f} | {tps:,.0f} tok/s{spread}")

            final = step == stop
            # evaluations run alike on every rank (FSDP2's forward needs them all): the same numbers
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
                if do_eval and passkey_eval:
                    acc = evaluate_passkey(
                        model, tokenizer, d.seq_len, tc.batch_size, tc.seed, rows=tc.eval_passkey_prompts
                    )
                    row["eval_passkey_acc"] = acc
                    say(
                        f"step {step}: passkey retrieval, held-out {d.seq_len}-token prompts {100 * acc:.1f}%"
                    )
                if do_eval and summary_eval is not None:
                    result = evaluate_summary(model, summary_eval, tc.eval_tokens)
                    row["eval_summary_loss"] = result["eval_summary_loss"]
                    on = "aclsum val" if d.summary_data == "aclsum" else "the training .jsonl, not held out"
                    say(
                        f"step {step}: eval summary loss {result['eval_summary_loss']:.4f} "
                        f"({result['eval_summary_tokens']:,} summary tokens of {on})"
                    )
                if metrics is not None:
                    metrics.write(row)
                if bar.disable and not do_eval:
                    acc = f", passkey {100 * row['passkey_acc']:.0f}%" if "passkey_acc" in row else ""
                    acc += f", copy loss {row['copy_loss']:.3f}" if "copy_loss" in row else ""
                    say(
                        f"step {step}/{stop}: loss {row['loss']:.4f}{acc}, lr {row['lr']:.2e}, "
                        f"{tps:,.0f} tok/s{spread.replace(' |', ',')}"
                    )
                window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0
                window_hits, window_rows = 0, 0
                window_copy = []
                last_row = row
            if final or (tc.save_every and step % tc.save_every == 0):
                # FSDP2: the whole model and optimizer state gathered onto rank 0 (every rank takes
                # part); otherwise (None, None): the model's and optimizer's own state dicts
                weights, opt_state = distributed.full_state(model, optimizer, dist) or (None, None)
                last_saved = out_dir / ckpt.CHECKPOINTS / ckpt.step_dir_name(step)
                if dist.is_main:
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
                        model_state=weights,
                        optimizer_state=opt_state,
                    )
                distributed.barrier(dist)  # the others wait until the checkpoint is complete
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    log(f"trained {step} steps ({tokens_seen:,} tokens); checkpoint: {last_saved}")
    return last_saved


def _quiet(_msg: str) -> None:
    pass


def _prepare_in_turn(config: RunConfig, tokenizer: str | None, dist: distributed.Dist):
    """Prepare the data on each node's first process, then let the others find it in the cache
    (concurrent preparations would each tokenise the corpus, and race for the same folder)."""
    if dist.local_rank != 0:
        distributed.barrier(dist)
    data = _prepare(config, tokenizer)
    if dist.local_rank == 0:
        distributed.barrier(dist)
    return data


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
