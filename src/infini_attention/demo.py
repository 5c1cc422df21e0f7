"""``infini demo``: the main job on the embedded models, offline, in a few minutes on 2 cores.

Streams a held-out book excerpt through the default (books language) model and passkey prompts of
1M tokens (and shorter ones) through the passkey model, then prints one table: passkey accuracy,
perplexity with and without the memory, tokens/s and peak resident memory; writes the gate and
perplexity plots. ``passkey_model=None`` runs the passkey prompts through the language model too.
"""

from __future__ import annotations

import json
import resource
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

SHORT_LENGTH = 32768  # key at start, middle and end
LONG_LENGTH = 1048576  # one prompt of 1M tokens, key at the start: the farthest from the question
EXCERPT = "austen-emma.txt"  # held out: the default model never trained on Austen


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steady_state_bytes(model) -> int:
    """Bytes of one stream's state at a segment boundary once a segment has passed (it holds the
    memory, and with ``local_overlap`` the previous segment's tail): the same at any length."""
    ids = torch.zeros(1, model.config.segment_len, dtype=torch.long)
    with torch.no_grad():
        return model(ids, logits_to_keep=1).state.nbytes


def describe(name: str, model, log) -> int:
    """Log one line about the model; returns its steady state size in bytes."""
    c = model.config
    state_bytes = steady_state_bytes(model)
    n_params = sum(p.numel() for p in model.parameters())
    overlap = f", local overlap {c.local_overlap}" if getattr(c, "local_overlap", 0) else ""
    log(
        f"model {name}: {n_params / 1e6:.2f}M parameters, {c.n_layers} layers, d_model {c.d_model}, "
        f"{c.n_heads} heads, segment {c.segment_len}{overlap}, {c.update} memory; "
        f"state {state_bytes / 1024:.0f} KiB at any length"
    )
    return state_bytes


def held_out_excerpt() -> str:
    return resources.files("infini_attention").joinpath("assets", EXCERPT).read_text(encoding="utf-8")


def run_demo(
    model_name: str = "default",
    *,
    passkey_model: str | None = "passkey",
    out_dir: str | Path = "infini-demo",
    short_length: int = SHORT_LENGTH,
    long_length: int = LONG_LENGTH,
    trials: int = 3,
    seed: int = 0,
    log=print,
) -> dict[str, Any]:
    from .eval.passkey import format_passkey_table, run_passkey
    from .eval.perplexity import evaluate_ppl, format_ppl_table
    from .eval.plots import plot_gates, plot_ppl
    from .pretrained import load_pretrained

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = load_pretrained(model_name)
    model.eval()
    state_bytes = describe(model_name, model, log)
    pk_name = passkey_model or model_name
    if pk_name == model_name:
        pk_model, pk_tokenizer = model, tokenizer
    else:  # the retrieval model (trained for it, not a language model): docs/passkey.md
        pk_model, pk_tokenizer = load_pretrained(pk_name)
        pk_model.eval()
        describe(pk_name, pk_model, log)
    n_params = sum(p.numel() for p in model.parameters())

    text = held_out_excerpt()
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    ppl = evaluate_ppl(model, [(EXCERPT, ids)], buckets=(0, 1024, 4096), memory_reset=True)
    log(f"\nHeld-out excerpt ({EXCERPT}, {len(ids):,} tokens): perplexity by position")
    log(format_ppl_table(ppl))

    def progress(cell: dict) -> None:
        log(
            f"  passkey {cell['length']:>9,} tokens, key at {cell['position']:<6}: "
            f"{cell['correct']}/{cell['trials']} correct, {cell['tokens_per_s']:,.0f} tokens/s"
        )

    log(f"\nPasskey retrieval, model {pk_name} (the paper's prompt, greedy decoding, exact match):")
    short = run_passkey(pk_model, pk_tokenizer, [short_length], trials=trials, seed=seed, progress=progress)
    long = run_passkey(
        pk_model, pk_tokenizer, [long_length], ["start"], trials=trials, seed=seed, progress=progress
    )
    log(format_passkey_table(short))
    passkey = {
        "cells": short["cells"] + long["cells"],
        "tokens": short["tokens"] + long["tokens"],
        "seconds": short["seconds"] + long["seconds"],
    }
    passkey["tokens_per_s"] = passkey["tokens"] / passkey["seconds"]

    gates = plot_gates(model, out / "gates.png")
    plot_ppl(ppl, out / "ppl.png")
    summary = {
        "model": model_name,
        "passkey_model": pk_name,
        "parameters": n_params,
        "state_bytes": state_bytes,
        "ppl_memory_on": ppl["overall"]["ppl"],
        "ppl_memory_off": ppl["overall"]["ppl_no_memory"],
        "ppl_memory_reset": ppl["overall"]["ppl_memory_reset"],
        "passkey_accuracy": {f"{c['length']}-{c['position']}": c["accuracy"] for c in passkey["cells"]},
        "passkey_tokens": passkey["tokens"],
        "tokens_per_s": passkey["tokens_per_s"],
        "peak_rss_mb": peak_rss_mb(),
        "seconds": time.perf_counter() - start,
        "gates": gates,
    }
    (out / "demo.json").write_text(json.dumps({"summary": summary, "ppl": ppl, "passkey": passkey}, indent=2))
    short_acc = " / ".join(f"{c['accuracy']:.0%} ({c['correct']}/{c['trials']})" for c in short["cells"])
    long_cell = long["cells"][0]
    log("\n| what | value |\n|---|---|")
    log(f"| passkey accuracy, {short_length:,} tokens, key at start / middle / end | {short_acc} |")
    log(
        f"| passkey accuracy, {long_length:,} tokens, key at the start | {long_cell['accuracy']:.0%} "
        f"({long_cell['correct']}/{long_cell['trials']}) |"
    )
    log(f"| perplexity, held-out excerpt, memory on | {summary['ppl_memory_on']:.2f} |")
    log(f"| perplexity, same, memory gated off (local attention only) | {summary['ppl_memory_off']:.2f} |")
    log(f"| perplexity, same, memory emptied at every segment | {summary['ppl_memory_reset']:.2f} |")
    log(f"| streaming speed | {summary['tokens_per_s']:,.0f} tokens/s |")
    log(f"| peak resident memory | {summary['peak_rss_mb']:,.0f} MB |")
    log(f"| wall time | {summary['seconds']:.0f} s |")
    log(f"\nwrote {out / 'gates.png'}, {out / 'ppl.png'}, {out / 'demo.json'}")
    return summary
