"""`infini bench table2`: the Table 2 harness end to end on the committed excerpt with a tiny model,
the Table 1 state formulas against hand-computed values, and its argument errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.cli import main
from infini_attention.commands.bench import VARIANTS as CLI_VARIANTS
from infini_attention.train import load_config

table2 = pytest.importorskip("infini_attention.eval.table2", reason="needs matplotlib")

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
EXCERPT = ROOT / "data" / "excerpt"
PNG = b"\x89PNG\r\n\x1a\n"
STEPS, BATCH, SEQ = 3, 2, 64
CONFIG = """
[model]
vocab_size = "auto"
d_model = 32
n_layers = 3
n_heads = 2
segment_len = 16
update = "delta"
rmt_memory_tokens = 4
knn_top_k = 4
knn_memory = 128

[data]
corpus = "{corpus}"
vocab_size = 300
seq_len = {seq}
cache_dir = "{cache}"

[optim]
lr = 1e-2
gate_lr = 1e-1
warmup_steps = 1

[train]
batch_size = {batch}
max_steps = 10
seed = 0
device = "cpu"
log_every = 1
eval_every = 0
eval_tokens = 64
save_every = 0
keep_checkpoints = 1
tensorboard = false
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("table2-config")
    path = folder / "table2.toml"
    text = CONFIG.format(corpus=EXCERPT, cache=folder / "cache", seq=SEQ, batch=BATCH)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(config, tmp_path_factory):
    """All six variants, 3 steps each, 600 evaluation tokens; their checkpoints copied."""
    out = tmp_path_factory.mktemp("table2-run")
    argv = ["bench", "table2", "--config", str(config), "--out", str(out / "runs")]
    argv += ["--max-steps", str(STEPS), "--eval-tokens", "600", "--copy-checkpoints", str(out / "ckpt")]
    assert main(argv) == 0
    report = json.loads((out / "runs" / "table2.json").read_text(encoding="utf-8"))
    return out, report


def test_variant_names_match():
    assert tuple(table2.VARIANTS) == CLI_VARIANTS


def test_writes_every_report(run):
    out, report = run
    runs = out / "runs"
    assert list(report["variants"]) == list(table2.VARIANTS)
    assert (runs / "table2.png").read_bytes().startswith(PNG)
    for name in ("infini-linear", "infini-delta"):
        assert (runs / f"gates-{name}.png").read_bytes().startswith(PNG)
    md = (runs / "table2.md").read_text(encoding="utf-8")
    for name in table2.VARIANTS:
        assert f"**{name}**" in md
    assert "Figure 3" in md and "mixer heads near 0.5" in md and "specialised heads" in md
    assert "Every variant was trained alike" in md and report["setup_differences"] == []
    assert report["variants"]["rmt"]["train"]["run"]["train"]["seed"] == 0
    meta = report["meta"]
    assert meta["torch"] == torch.__version__ and meta["threads"] >= 1
    assert meta["command"].startswith("infini bench table2 --config") and "--max-steps 3" in meta["command"]


def test_numbers_are_finite_and_runs_alike(run):
    _, report = run
    rows = report["variants"]
    for name, row in rows.items():
        ppl = row["ppl"]
        assert math.isfinite(ppl["overall"]["ppl"]) and ppl["overall"]["ppl"] > 1, name
        assert ppl["tokens"] == 599 and len(ppl["docs"]) == 1  # 600 tokens of the first document
        assert all(b["ppl"] is None or math.isfinite(b["ppl"]) for b in ppl["buckets"])
        t = row["train"]
        # same data, tokens and steps for every variant
        assert (t["steps"], t["tokens_trained"]) == (STEPS, STEPS * BATCH * SEQ), name
        assert t["train_seconds"] > 0 and math.isfinite(t["final_train_loss"])
        assert row["state"]["measured_tokens"] == 592  # 37 whole segments of 16
    assert rows["infini-linear"]["update"] == "linear" and rows["infini-delta"]["update"] == "delta"
    attentions = {r["attention"] for r in rows.values()}
    assert attentions == {"infini", "transformer-xl", "local", "memorizing", "rmt"}
    local = rows["local"]["state"]
    assert local["ratio_formula"] == local["ratio_measured"] == "inf"  # no state; JSON has no infinity
    assert rows["memorizing"]["state"]["ratio_measured"] == 1.0
    assert rows["infini-delta"]["state"]["ratio_formula"] > rows["transformer-xl"]["state"]["ratio_formula"]


def test_measured_state_matches_table1(run):
    """600 tokens: the state after their 37 whole segments of 16 (S = 37)."""
    _, report = run
    s = {name: row["state"] for name, row in report["variants"].items()}
    assert all(x["segments"] == 37 for x in s.values())
    # H = 2 heads of 16, l = 3 layers, N = 16: float32 values, plus a validity byte per cached token
    assert s["infini-delta"]["values"] == 16 * 17 * 2 * 3
    assert s["infini-delta"]["measured_bytes"] == 4 * s["infini-delta"]["values"]
    assert s["transformer-xl"]["values"] == 32 * 2 * 16 * 3
    assert s["transformer-xl"]["measured_bytes"] == 4 * s["transformer-xl"]["values"] + 16 * 3
    assert s["memorizing"]["values"] == 32 * 2 * 128 + 32 * 2 * 16 * 3  # kNN store capped at 128 tokens
    assert s["memorizing"]["measured_bytes"] == 4 * s["memorizing"]["values"] + 128 + 16 * 3
    assert s["rmt"]["values"] == 32 * 4 * 3 * 2
    assert s["rmt"]["measured_bytes"] == 4 * 32 * 4  # RMT carries its p = 4 last-layer tokens only
    assert s["local"]["measured_bytes"] == 0


def test_copied_checkpoints_load(run):
    from safetensors.torch import load_file

    from infini_attention.pretrained import load_pretrained

    out, report = run
    for name in table2.VARIANTS:
        folder = out / "ckpt" / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [*table2.CHECKPOINT_FILES, table2.TRAINING_FILE]
        )
        saved = json.loads((folder / table2.TRAINING_FILE).read_text(encoding="utf-8"))
        assert saved == report["variants"][name]["train"]  # how the copy was trained travels with it
        assert (
            saved["steps"] == STEPS
            and saved["run"]["model"]["attention"] == report["variants"][name]["attention"]
        )
        model, _ = load_pretrained(folder)
        assert model.config.attention == report["variants"][name]["attention"]
        stored = load_file(str(folder / "model.safetensors"))
        assert {t.dtype for t in stored.values()} == {torch.bfloat16}  # shipped in bfloat16
        assert report["variants"][name]["evaluated"] == str(folder)  # the table is the shipped weights


def test_resume_and_skip_train(run, config, monkeypatch):
    out, _ = run
    runs = out / "runs"
    before = json.loads((runs / "local" / table2.BENCH_FILE).read_text())
    argv = ["bench", "table2", "--config", str(config), "--out", str(runs), "--variants", "local"]
    assert main([*argv, "--max-steps", str(STEPS + 1), "--eval-tokens", "40"]) == 0
    report = json.loads((runs / "table2.json").read_text())
    assert report["variants"]["local"]["train"]["steps"] == STEPS + 1  # resumed, not restarted
    after = json.loads((runs / "local" / table2.BENCH_FILE).read_text())
    assert after["sessions"] == before["sessions"] + 1 and after["seconds"] > before["seconds"]

    def no_training(*args, **kwargs):
        raise AssertionError("--skip-train trained")

    monkeypatch.setattr(table2, "train_variant", no_training)
    assert main([*argv, "--skip-train", "--eval-tokens", "40"]) == 0
    report = json.loads((runs / "table2.json").read_text())
    assert report["variants"]["local"]["train"]["steps"] == STEPS + 1


def test_evaluate_shipped_copies(run, config, tmp_path, monkeypatch):
    """--checkpoints re-evaluates the shipped copies with no runs folder: the same numbers, and the
    training summary read from each copy's training.json."""
    out, report = run
    shipped = tmp_path / "shipped"
    for name in ("local", "infini-delta"):
        shutil.copytree(out / "ckpt" / name, shipped / name)

    def no_training(*args, **kwargs):
        raise AssertionError("--checkpoints trained")

    monkeypatch.setattr(table2, "train_variant", no_training)
    argv = [
        "bench",
        "table2",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "eval"),
        "--eval-tokens",
        "600",
    ]
    assert main([*argv, "--variants", "local,infini-delta", "--checkpoints", str(shipped)]) == 0
    again = json.loads((tmp_path / "eval" / "table2.json").read_text(encoding="utf-8"))
    for name in ("local", "infini-delta"):
        row, before = again["variants"][name], report["variants"][name]
        assert row["evaluated"] == str(shipped / name)
        assert row["ppl"]["overall"]["ppl"] == before["ppl"]["overall"]["ppl"]
        assert row["state"]["measured_bytes"] == before["state"]["measured_bytes"]
        assert row["train"]["steps"] == STEPS and row["train"]["run"] == before["train"]["run"]
    assert again["setup_differences"] == []
    assert "--checkpoints" in again["meta"]["command"]
    # a copy without training.json still evaluates; what is unknown is shown as "-"
    (shipped / "local" / table2.TRAINING_FILE).unlink()
    assert main([*argv, "--variants", "local", "--checkpoints", str(shipped)]) == 0
    md = (tmp_path / "eval" / "table2.md").read_text(encoding="utf-8")
    row = next(line for line in md.splitlines() if line.startswith("| **local** |"))
    assert row.endswith("| - | - | - |")  # train time, tokens, steps


def test_copy_refuses_large_checkpoints(run, tmp_path, monkeypatch):
    out, _ = run
    folder = table2.final_checkpoint(out / "runs" / "rmt", "rmt")
    monkeypatch.setattr(table2, "CHECKPOINT_LIMIT", 1000)
    with pytest.raises(ValueError, match=r"rmt's checkpoint is .* MB in bfloat16, over the 0.001 MB limit"):
        table2.copy_checkpoints({"rmt": folder}, tmp_path / "copies")
    assert not (tmp_path / "copies" / "rmt").exists()  # the oversized copy is removed
    base = load_config(ROOT / "configs" / "table2.toml")
    with pytest.raises(ValueError, match="over the 0.001 MB limit per checkpoint"):
        table2.check_copy_size(base, ["local"])


def test_setup_differences():
    def row(attention: str, lr: float) -> dict:
        run = {
            "model": {"attention": attention, "d_model": 32},
            "optim": {"lr": lr},
            "train": {"out_dir": attention},
        }
        return {"train": {"run": run}}

    assert table2.setup_differences({"local": row("local", 1e-3), "rmt": row("rmt", 1e-3)}) == []
    assert table2.setup_differences({"local": row("local", 1e-3), "rmt": row("rmt", 2e-3)}) == ["[optim] lr"]


# ---------------------------------------------------------------- Table 1 by hand


def paper_config(attention: str, **extra) -> ModelConfig:
    """The paper's §4.2 model: 12 layers, 8 heads of 128, N = 2048 (d_model 1024 implied)."""
    return ModelConfig(
        vocab_size=32000, d_model=1024, n_layers=12, n_heads=8, segment_len=2048, attention=attention, **extra
    )


@pytest.mark.parametrize(
    ("attention", "extra", "segments", "values"),
    [
        ("infini", {}, 16, 1_585_152),  # 128·129·8·12 ≈ 1.6M
        ("transformer-xl", {}, 16, 50_331_648),  # 256·8·2048·12 ≈ 50M
        ("rmt", {"rmt_memory_tokens": 100}, 16, 2_457_600),  # 1024·100·12·2 ≈ 2.5M
        ("memorizing", {}, 64, 184_549_376),  # 65,536-token kNN memory + the XL caches ≈ 183M
        ("memorizing", {"knn_memory": None}, 4, 16_777_216 + 50_331_648),  # 256·8·(4·2048) + XL
        ("local", {}, 16, 0),
    ],
)
def test_state_formula_paper_values(attention, extra, segments, values):
    text, got = table2.state_formula(paper_config(attention, **extra), segments)
    assert got == values
    assert text.startswith("0 (") if attention == "local" else f"·{paper_config(attention).n_layers}" in text


def test_state_formula_counts_kv_heads():
    cfg = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, segment_len=8)
    assert table2.state_formula(cfg, 3)[1] == 16 * 17 * 2 * 2  # memory per key/value head


def test_state_formula_rejects_full():
    with pytest.raises(ValueError, match="no Table 1 formula for attention 'full'"):
        table2.state_formula(paper_config("full"), 1)


def test_measure_state_bytes_whole_segments():
    """Streamed to a segment boundary, Infini's state is exactly its Table 1 values in float32."""
    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, segment_len=8)
    model = InfiniTransformer(cfg).eval()
    ids = torch.randint(0, 50, (40,))
    assert table2.measure_state_bytes(model, ids, chunk_len=16) == 4 * table2.state_formula(cfg, 5)[1]
    assert table2.whole_segments(ids[:30], 8).shape == (24,) and table2.whole_segments(ids[:5], 8).shape == (
        5,
    )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variants": "infini-delta,nope"}, r"unknown variant 'nope' \(choose among infini-linear, "),
        ({"variants": "full"}, "variant 'full' is not trained by the harness"),
        ({"variants": " , "}, "--variants needs at least one of"),
        ({"variants": "local,rmt,local"}, "variant 'local' is listed twice"),
        ({"max_steps": 0}, r"--max-steps must be an int >= 1, got 0"),
        ({"eval_tokens": 1}, r"--eval-tokens must be an int >= 2, got 1"),
        ({"skip_train": True, "max_steps": 2}, "--max-steps limits training: it does nothing with"),
        (
            {"checkpoints": "x", "skip_train": True},
            "shipped copies as they are: --skip-train",
        ),
        ({"checkpoints": "x", "copy_checkpoints": "y"}, "as they are: --copy-checkpoints does not apply"),
        (
            {"checkpoints": "/nonexistent", "variants": "rmt"},
            r"--checkpoints: /nonexistent/rmt has no config",
        ),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        table2.check_options(table2.Table2Options(**kwargs))


def test_cli_errors_are_one_line(config, tmp_path, capsys):
    argv = ["bench", "table2", "--config", str(config), "--out", str(tmp_path)]
    assert main([*argv, "--variants", "infini,local"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("infini: error: unknown variant 'infini'") and err.count("\n") == 1
    assert main([*argv, "--variants", "local", "--skip-train"]) == 2
    assert "no checkpoint of 'local' in" in capsys.readouterr().err
    assert main([*argv, "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
