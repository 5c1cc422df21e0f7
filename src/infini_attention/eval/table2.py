"""The paper's Table 2 at small scale: train every attention variant alike, then compare them.

``run_table2(Table2Options(...))`` (CLI: ``infini bench table2``) does, for each variant:

1. **train** it into ``<out>/<variant>/`` with ``train()`` from ONE base config (``configs/table2.toml``),
   overriding only the ``[model]`` keys that pick the variant (``VARIANTS``), so size, data, tokens,
   optimiser and seed are the same for every row; a run with a checkpoint is resumed, so an
   interrupted harness goes on where it stopped;
2. **evaluate** the held-out split (the Austen novels for ``books``), each document streamed whole,
   with ``evaluate_ppl``: perplexity overall and per position bucket;
3. **measure the state**: the paper's Table 1 formula in values, and the bytes ``state.nbytes``
   holds after streaming the longest evaluated document from ``model.init_state(1)``;

then writes ``<out>/table2.md``, ``table2.json``, ``table2.png`` (perplexity by position per variant)
and, for the Infini rows, ``gates-<variant>.png`` (the paper's Figure 3). ``copy_checkpoints`` copies
the final weights (safetensors and JSON only) to a folder such as ``checkpoints/table2/<variant>/``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models import ModelConfig
from .perplexity import DEFAULT_BUCKETS, bucket_labels

# harness variant -> the [model] keys that select it (everything else comes from the base config)
VARIANTS: dict[str, dict[str, Any]] = {
    "infini-linear": {"attention": "infini", "update": "linear"},
    "infini-delta": {"attention": "infini", "update": "delta"},
    "transformer-xl": {"attention": "transformer-xl"},
    "local": {"attention": "local"},
    "memorizing": {"attention": "memorizing"},
    "rmt": {"attention": "rmt"},
}
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what load_pretrained reads
TRAINING_FILE = "training.json"  # beside a shipped copy: how it was trained (training_summary)
CHECKPOINT_LIMIT = 5_000_000  # bytes per copied checkpoint (5 MB): what the repository accepts
BENCH_FILE = "table2-train.json"  # per variant: training wall-clock summed over resumed sessions
NEAR_HALF = 0.1  # a gate within 0.5 ± this is a "mixer near 0.5" in the summary


@dataclass
class Table2Options:
    config: str = "configs/table2.toml"
    variants: Sequence[str] = tuple(VARIANTS)
    out: str = "runs/table2"
    max_steps: int | None = None  # stop each variant at this step (the schedule keeps [train] max_steps)
    skip_train: bool = False  # evaluate the existing checkpoints only
    eval_tokens: int | None = None  # evaluate at most this many held-out tokens (None: all)
    copy_checkpoints: str | None = None  # copy the final checkpoints here, one folder per variant
    checkpoints: str | None = None  # evaluate the shipped copies DIR/<variant>/ as they are (no training)
    buckets: Sequence[int] = DEFAULT_BUCKETS
    command: str | None = None  # the command line, for the metadata
    log: Callable[[str], None] = field(default=print, repr=False)


# ---------------------------------------------------------------- arguments and configs


def parse_variants(text: str | Sequence[str]) -> list[str]:
    """``"a,b"`` (or a list) -> known variant names, in the order given; a ValueError otherwise."""
    names = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    names = [s for s in names if s]
    if not names:
        raise ValueError(f"--variants needs at least one of {', '.join(VARIANTS)}")
    for name in names:
        if name == "full":
            raise ValueError(
                "variant 'full' is not trained by the harness (causal attention over the whole input: "
                "its cost grows with the square of the length)"
            )
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r} (choose among {', '.join(VARIANTS)})")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variant {dup[0]!r} is listed twice in --variants")
    return names


def check_options(opts: Table2Options) -> list[str]:
    """Every argument error before any work starts; returns the variants."""
    variants = parse_variants(opts.variants)
    for name, value, low in (("--max-steps", opts.max_steps, 1), ("--eval-tokens", opts.eval_tokens, 2)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if opts.skip_train and opts.max_steps is not None:
        raise ValueError("--max-steps limits training: it does nothing with --skip-train")
    if opts.checkpoints is not None:
        for flag, used in (
            ("--max-steps", opts.max_steps is not None),
            ("--skip-train", opts.skip_train),
            ("--copy-checkpoints", opts.copy_checkpoints is not None),
        ):
            if used:
                raise ValueError(f"--checkpoints evaluates shipped copies as they are: {flag} does not apply")
        for v in variants:
            folder = Path(opts.checkpoints).expanduser() / v
            missing = [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]
            if missing:
                raise ValueError(f"--checkpoints: {folder} has no {missing[0]} (not a shipped checkpoint)")
    if not opts.out:
        raise ValueError("--out must name a folder")
    return variants


def variant_config(base, variant: str, out_dir: str | Path):
    """A ``RunConfig`` for ``variant``: ``base`` with only the variant's ``[model]`` keys replaced."""
    from ..train.config import RunConfig, _model_fields

    missing = [k for k in VARIANTS[variant] if k not in _model_fields()]
    if missing:
        raise ValueError(f"variant {variant!r} needs ModelConfig.{missing[0]}, which this version lacks")
    c = copy.deepcopy(base)
    c.train.out_dir = str(out_dir)
    # a new RunConfig validates the overridden [model] table like a config file would
    return RunConfig(model={**c.model, **VARIANTS[variant]}, data=c.data, optim=c.optim, train=c.train)


# ---------------------------------------------------------------- state size (Table 1)


def state_formula(cfg: ModelConfig, n_segments: int) -> tuple[str, int]:
    """The paper's Table 1 memory footprint of ``cfg`` in values: ``(formula with numbers, total)``.

    d_key = d_value = head_dim; H counts the key/value heads (what a cache or memory stores); N the
    segment length, l the layers, S ``n_segments``. Memorizing: a kNN memory of N·S tokens at one
    layer, at most ``knn_memory`` of them (the paper's 65K), plus a Transformer-XL cache at every
    layer (the paper's 183M: 65,536·256·8 + 2048·256·8·12). RMT: d_model·p·l·2.
    """
    dk = dv = cfg.head_dim
    H, N, l, S = cfg.n_kv_heads, cfg.segment_len, cfg.n_layers, n_segments
    a = cfg.attention
    if a == "infini":
        return f"dk·(dv+1)·H·l = {dk}·{dv + 1}·{H}·{l}", dk * (dv + 1) * H * l
    xl = (dk + dv) * H * N * l
    xl_text = f"(dk+dv)·H·N·l = {dk + dv}·{H}·{N}·{l}"
    if a == "transformer-xl":
        return xl_text, xl
    if a == "memorizing":
        stored = N * S if cfg.knn_memory is None else min(N * S, cfg.knn_memory)
        cap = "" if stored == N * S else f", capped at knn_memory {cfg.knn_memory}"
        text = f"(dk+dv)·H·min(N·S, mem) + XL = {dk + dv}·{H}·{stored} (S={S}{cap}) + {xl_text}"
        return text, (dk + dv) * H * stored + xl
    if a == "rmt":
        p = cfg.rmt_memory_tokens
        return f"d_model·p·l·2 = {cfg.d_model}·{p}·{l}·2", cfg.d_model * p * l * 2
    if a == "local":
        return "0 (no state between segments)", 0
    raise ValueError(f"no Table 1 formula for attention {a!r}")


@torch.no_grad()
def measure_state_bytes(model, ids: torch.Tensor, chunk_len: int) -> int:
    """``state.nbytes`` after streaming ``ids`` ``[T]`` from ``model.init_state(1)``.

    Only the last position's logits are computed (``logits_to_keep=1``): the state is what counts.
    """
    device = next(model.parameters()).device
    state = model.init_state(1)
    for a in range(0, ids.shape[0], chunk_len):
        x = ids[a : a + chunk_len].to(device)[None]  # [1, t]
        state = model(x, state, logits_to_keep=1).state
    return int(state.nbytes)


def compression(reference: float | None, value: float) -> float | None:
    """``reference / value`` (how many times smaller than Memorizing); None when undefined."""
    if reference is None:
        return None
    if value == 0:
        return math.inf
    return reference / value


# ---------------------------------------------------------------- training


def train_variant(config, out_dir: Path, max_steps: int | None, log: Callable[[str], None]) -> None:
    """Train (or resume) one variant; adds this session's wall-clock to ``<out_dir>/BENCH_FILE``."""
    from ..train import train
    from ..train.checkpoint import latest_checkpoint

    found = latest_checkpoint(out_dir) if out_dir.is_dir() else None
    before = _checkpoint_step(found)
    t0 = time.perf_counter()
    resume = found is not None
    final = train(config, out_dir=out_dir, max_steps=max_steps, resume=resume, progress=False, log=log)
    seconds = time.perf_counter() - t0
    if _checkpoint_step(final) > before:  # a run already finished trains nothing: its time is not added
        record = _read_json(out_dir / BENCH_FILE) or {"seconds": 0.0, "sessions": 0}
        record = {"seconds": record["seconds"] + seconds, "sessions": record["sessions"] + 1}
        (out_dir / BENCH_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _checkpoint_step(folder: Path | None) -> int:
    if folder is None:
        return 0
    return int((_read_json(folder / "trainer_state.json") or {}).get("step", 0))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def final_checkpoint(out_dir: Path, variant: str) -> Path:
    from ..train.checkpoint import latest_checkpoint

    found = latest_checkpoint(out_dir) if out_dir.is_dir() else None
    if found is None:
        raise ValueError(f"no checkpoint of {variant!r} in {out_dir}: train it first (without --skip-train)")
    return found


def training_summary(out_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """Steps, tokens and wall-clock of a variant's training, from its checkpoint and BENCH_FILE."""
    state = _read_json(checkpoint / "trainer_state.json") or {}
    bench = _read_json(out_dir / BENCH_FILE) or {}
    metrics = state.get("metrics") or {}
    return {
        "checkpoint": str(checkpoint),
        "steps": int(state.get("step", 0)),
        "tokens_trained": int(state.get("tokens_seen", 0)),
        "train_seconds": bench.get("seconds"),  # None: trained outside the harness
        "final_train_loss": metrics.get("loss"),
        # how it was really trained (a --skip-train run may find checkpoints of another config)
        "run": (_read_json(checkpoint / "config.json") or {}).get("run"),
    }


def shipped_summary(folder: Path) -> dict[str, Any]:
    """The training summary stored beside a shipped copy (``TRAINING_FILE``); unknown fields None."""
    saved = _read_json(folder / TRAINING_FILE) or {}
    out = {k: saved.get(k) for k in ("steps", "tokens_trained", "train_seconds", "final_train_loss", "run")}
    out["checkpoint"] = saved.get("checkpoint", str(folder))
    if "note" in saved:
        out["note"] = saved["note"]
    return out


def setup_differences(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Settings in which the variants' training runs differ, besides the keys that pick the
    variant and the output folder: empty when every row was trained alike."""
    picked = {k for keys in VARIANTS.values() for k in keys}

    def setup(run: dict | None) -> dict[str, Any]:
        run = copy.deepcopy(run or {})
        run.get("train", {}).pop("out_dir", None)
        for key in picked:
            run.get("model", {}).pop(key, None)
        return {f"[{sec}] {k}": v for sec, table in run.items() for k, v in table.items()}

    setups = [setup(r["train"].get("run")) for r in rows.values()]
    keys = sorted({k for x in setups for k in x})
    return [k for k in keys if len({json.dumps(x.get(k)) for x in setups}) > 1]


# ---------------------------------------------------------------- evaluation


def eval_docs(config, checkpoint: Path):
    """The held-out split of the base config's corpus, in the checkpoint's tokenizer (cached)."""
    from ..data.prepare import prepare_data

    d = config.data
    data = prepare_data(
        d.corpus,
        tokenizer=str(checkpoint / "tokenizer.json"),
        vocab_size=d.vocab_size,
        cache_dir=d.cache_dir,
        eval_fraction=d.eval_fraction,
        text_field=d.text_field,
    )
    if data.eval.num_docs == 0:
        raise ValueError(f"the eval split of {d.corpus} has no documents")
    return data.eval


def longest_doc(docs, result: dict[str, Any]) -> torch.Tensor:
    """The longest document as evaluated (cut to ``--eval-tokens`` where that applied): ids ``[T]``."""
    import numpy as np

    best = max(range(len(result["docs"])), key=lambda i: result["docs"][i]["tokens"])
    n = result["docs"][best]["tokens"]
    return torch.from_numpy(np.asarray(docs.doc(best)[:n]).astype(np.int64))


def whole_segments(ids: torch.Tensor, segment_len: int) -> torch.Tensor:
    """``ids`` ``[T]`` cut to whole segments (all of it when shorter than one): Table 1 counts the
    state carried from one segment to the next, without the open segment's buffers."""
    n = ids.shape[0] // segment_len * segment_len
    return ids[:n] if n else ids


def evaluate_variant(
    variant: str, config, checkpoint: Path, opts: Table2Options, plots: Path
) -> dict[str, Any]:
    """Perplexity by position, Table 1 state size (formula and measured) and, with gates, Figure 3."""
    from ..pretrained import load_pretrained
    from .perplexity import evaluate_ppl

    device = "cuda" if torch.cuda.is_available() else None
    model, _ = load_pretrained(checkpoint, device=device)
    docs = eval_docs(config, checkpoint)
    chunk = config.data.seq_len  # whole training rows per call: same result as segment by segment
    ppl = evaluate_ppl(model, docs, opts.buckets, opts.eval_tokens, memory_off=False, chunk_len=chunk)
    ids = whole_segments(longest_doc(docs, ppl), model.config.segment_len)
    n_segments = -(-ids.shape[0] // model.config.segment_len)  # S
    text, values = state_formula(model.config, n_segments)
    out = {
        "attention": model.config.attention,
        "update": model.config.update if model.config.attention == "infini" else None,
        "model": model.config.to_dict(),  # the checkpoint's, whatever the base config says now
        "ppl": ppl,
        "state": {
            "formula": text,
            "values": values,
            "measured_bytes": measure_state_bytes(model, ids, chunk),
            "measured_tokens": int(ids.shape[0]),
            "segments": n_segments,
        },
    }
    if model.config.attention == "infini":
        out["gates"] = gate_report(model, plots / f"gates-{variant}.png")
    return out


def gate_report(model, path: Path) -> dict[str, Any]:
    """Figure 3 for one model, plus which kinds of head appeared (specialised near 0/1, mixers)."""
    import numpy as np

    from .plots import gate_scores, plot_gates

    summary = plot_gates(model, path)
    scores = gate_scores(model)  # [layers, heads]
    summary["near_half"] = int((np.abs(scores - 0.5) < NEAR_HALF).sum())
    summary["scores"] = scores.round(4).tolist()
    summary["figure"] = path.name
    return summary


# ---------------------------------------------------------------- reports


def add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Compression against Memorizing: by the formula always (Memorizing's config is the first
    trained model's with ``attention = "memorizing"``, when Memorizing itself is not in ``rows``),
    by measured bytes when Memorizing was measured too."""
    if not rows:
        return
    first = next(iter(rows.values()))
    model = rows["memorizing"]["model"] if "memorizing" in rows else first["model"]
    mem_cfg = dataclasses.replace(ModelConfig.from_dict(model), **VARIANTS["memorizing"])
    _, mem_values = state_formula(mem_cfg, first["state"]["segments"])
    mem_bytes = rows["memorizing"]["state"]["measured_bytes"] if "memorizing" in rows else None
    for row in rows.values():
        s = row["state"]
        s["ratio_formula"] = compression(mem_values, s["values"])
        s["ratio_measured"] = compression(mem_bytes, s["measured_bytes"])


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    if x is None:
        return "-"
    return "∞" if math.isinf(x) else fmt.format(x)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _values(n: int) -> str:
    """1585152 -> ``1.59M`` (the paper's style), small counts as they are."""
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def markdown_table(rows: dict[str, dict[str, Any]], buckets: Sequence[int]) -> list[str]:
    labels = bucket_labels(buckets)
    head = ["variant", "ppl", *(f"ppl {b}" for b in labels), "state (values)", "formula"]
    head += ["measured bytes", "× vs memorizing (formula)", "× measured", "train time", "tokens", "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        s, t = r["state"], r["train"]
        cells = [f"**{name}**", _num(r["ppl"]["overall"]["ppl"])]
        cells += [_num(b["ppl"]) for b in r["ppl"]["buckets"]]
        cells += [_values(s["values"]), s["formula"], f"{s['measured_bytes']:,}"]
        cells += [_num(s["ratio_formula"], "{:.1f}×"), _num(s["ratio_measured"], "{:.1f}×")]
        tokens, steps = t.get("tokens_trained"), t.get("steps")
        cells += [
            _duration(t.get("train_seconds")),
            "-" if tokens is None else f"{tokens:,}",
            str(steps or "-"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def gate_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, r in rows.items():
        g = r.get("gates")
        if g is None:
            continue
        special = g["near_0"] + g["near_1"]
        verdict = (
            f"specialised heads {'appear' if special else 'do not appear'} ({g['near_0']} near 0, "
            f"{g['near_1']} near 1, of {g['heads']}); mixer heads near 0.5 "
            f"{'appear' if g['near_half'] else 'do not appear'} ({g['near_half']} within 0.5 ± "
            f"{NEAR_HALF}, {g['mixers']} between 0.1 and 0.9); {g['layers_with_a_local_head']} layers "
            "have a local head (the paper: every layer has one)"
        )
        lines.append(f"- **{name}** ([{g['figure']}]({g['figure']})): {verdict}.")
    return lines


def _alike(report: dict[str, Any]) -> str:
    differ = report["setup_differences"]
    if differ:
        return f"**Warning: the variants were not trained alike**: {', '.join(differ)} differ."
    return (
        "Every variant was trained alike (same size, data, tokens, optimiser and seed): only `[model]` "
        "`attention` (and `update`) differ."
    )


def write_markdown(path: Path, report: dict[str, Any], buckets: Sequence[int]) -> None:
    rows, meta = report["variants"], report["meta"]
    any_row = next(iter(rows.values()))
    s = any_row["state"]
    lines = [
        "# Table 2 at small scale",
        "",
        f"Generated {meta['date']} by `{meta['command']}` (torch {meta['torch']}, {meta['threads']} threads, "
        f"device {meta['device']}). {_alike(report)}",
        "",
        f"Perplexity: the held-out split streamed whole, {any_row['ppl']['tokens']:,} predictions in "
        f"{len(any_row['ppl']['docs'])} document(s); buckets are positions in the document. State: "
        f"Table 1 formulas in values (d_key = d_value = head_dim, H key/value heads, S = {s['segments']} "
        f"whole segments of the longest evaluated document, {s['measured_tokens']:,} tokens; its last "
        "partial segment is left out) and bytes of `state.nbytes` after streaming those tokens from "
        "`init_state(1)` (float32, validity masks included; RMT carries only its p last-layer memory "
        "tokens, where the paper's formula counts every layer). "
        "× = Memorizing's state / the variant's (∞: no state).",
        "",
        *markdown_table(rows, buckets),
        "",
    ]
    gates = gate_lines(rows)
    if gates:
        lines += ["## Gate scores (Figure 3)", "", *gates, ""]
    lines += ["Perplexity by position: [table2.png](table2.png); everything: [table2.json](table2.json).", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def plot_buckets(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Perplexity per position bucket, one line per variant (empty buckets left out)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0), dpi=120)
    try:
        for name, r in rows.items():
            kept = [b for b in r["ppl"]["buckets"] if b["ppl"] is not None]
            ax.plot([b["label"] for b in kept], [b["ppl"] for b in kept], marker="o", label=name)
        ax.set_xlabel("position in the document (tokens)")
        ax.set_ylabel("perplexity")
        ax.set_title("Table 2 at small scale: perplexity by position", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)


def _json_safe(x: Any) -> Any:
    """Infinite ratios (a stateless variant) become the string "inf": JSON has no infinity."""
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def metadata(opts: Table2Options) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": opts.command or " ".join(sys.argv),
        "config": str(opts.config),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "eval_tokens": opts.eval_tokens,
        "max_steps": opts.max_steps,
    }


# ---------------------------------------------------------------- checkpoints


def estimate_weight_bytes(config, variant: str) -> int:
    """bfloat16 bytes of a variant's weights as shipped (each tied tensor once), without allocating them."""
    from ..models import InfiniTransformer

    cfg = variant_config(config, variant, "unused").model_config(config.data.vocab_size)
    with torch.device("meta"):
        model = InfiniTransformer(cfg)
    return sum(p.numel() for p in model.parameters()) * 2  # parameters() yields a tied weight once


def check_copy_size(config, variants: Sequence[str]) -> None:
    """Fail before training when a variant's checkpoint could not be shipped (over the limit)."""
    for v in variants:
        n = estimate_weight_bytes(config, v)
        if n > CHECKPOINT_LIMIT:
            raise ValueError(
                f"--copy-checkpoints: {v}'s weights take {n / 1e6:.1f} MB in bfloat16, over the "
                f"{CHECKPOINT_LIMIT / 1e6:g} MB limit per checkpoint; shrink [model]"
            )


def copy_checkpoints(
    checkpoints: dict[str, Path], dest: str | Path, summaries: dict[str, dict[str, Any]] | None = None
) -> dict[str, Path]:
    """Ship each ``variant -> checkpoint folder`` as ``dest/<variant>/``: config, tokenizer and the
    weights stored in bfloat16 (``save_pretrained``; JSON and safetensors only, no optimizer state),
    written atomically. Every copy is checked against the size limit; an oversized one is removed and
    nothing after it is written. The harness then evaluates these copies, so the table is exactly
    what ``load_pretrained`` gives anyone who re-evaluates them. ``summaries`` (variant -> its
    ``training_summary``) is written beside each copy as ``TRAINING_FILE``, so a copy says how it was
    trained when the training runs are gone (``--checkpoints``)."""
    from ..pretrained import load_pretrained, save_pretrained

    copied = {}
    for variant, folder in checkpoints.items():
        model, tokenizer = load_pretrained(folder)
        target = save_pretrained(model, tokenizer, Path(dest) / variant, dtype=torch.bfloat16)
        if summaries and variant in summaries:
            (target / TRAINING_FILE).write_text(
                json.dumps(_json_safe(summaries[variant]), indent=1) + "\n", encoding="utf-8"
            )
        size = sum(f.stat().st_size for f in target.iterdir())
        if size > CHECKPOINT_LIMIT:
            shutil.rmtree(target)
            raise ValueError(
                f"{variant}'s checkpoint is {size / 1e6:.1f} MB in bfloat16, over the "
                f"{CHECKPOINT_LIMIT / 1e6:g} MB limit ({folder}); not copied"
            )
        copied[variant] = target
    return copied


# ---------------------------------------------------------------- the harness


def run_table2(opts: Table2Options) -> dict[str, Any]:
    """Train (unless ``skip_train``), evaluate and report every variant; returns the JSON report."""
    from ..train import load_config

    variants = check_options(opts)
    base = load_config(opts.config)
    out = Path(opts.out).expanduser()
    configs = {v: variant_config(base, v, out / v) for v in variants}  # validates them all first
    if opts.copy_checkpoints and not opts.skip_train:
        check_copy_size(base, variants)
    if opts.checkpoints is not None:  # shipped copies, evaluated as they are
        evaluated = {v: Path(opts.checkpoints).expanduser() / v for v in variants}
        summaries = {v: shipped_summary(evaluated[v]) for v in variants}
    else:
        if not opts.skip_train:
            for i, v in enumerate(variants, 1):
                opts.log(f"[table2] training {v} ({i}/{len(variants)}) into {out / v}")
                train_variant(configs[v], out / v, opts.max_steps, opts.log)
        checkpoints = {v: final_checkpoint(out / v, v) for v in variants}
        summaries = {v: training_summary(out / v, checkpoints[v]) for v in variants}
        # shipped copies (bfloat16) are what is evaluated: anyone re-evaluating them gets the same table
        evaluated = checkpoints
        if opts.copy_checkpoints:
            evaluated = copy_checkpoints(checkpoints, opts.copy_checkpoints, summaries)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for i, v in enumerate(variants, 1):
        opts.log(f"[table2] evaluating {v} ({i}/{len(variants)}) from {evaluated[v]}")
        row = evaluate_variant(v, configs[v], evaluated[v], opts, out)
        row["train"] = summaries[v]
        row["evaluated"] = str(evaluated[v])
        rows[v] = row
    add_ratios(rows)
    differ = setup_differences(rows)
    if differ:
        opts.log(f"[table2] warning: the variants were not trained alike ({', '.join(differ)} differ)")
    report = {"meta": metadata(opts), "base_config": base.to_dict(), "setup_differences": differ}
    report["variants"] = rows
    write_markdown(out / "table2.md", report, opts.buckets)
    plot_buckets(out / "table2.png", rows)
    _write_report(out / "table2.json", report)
    opts.log(f"[table2] written {out / 'table2.md'}, {out / 'table2.json'}, {out / 'table2.png'}")
    return report


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(_json_safe(report), indent=1) + "\n", encoding="utf-8")
