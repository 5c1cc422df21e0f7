"""`infini demo` end to end on a small saved model (the shipped default is exercised by the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig, save_pretrained
from infini_attention.data.tokenizer import Tokenizer
from infini_attention.demo import held_out_excerpt, run_demo

pytestmark = pytest.mark.usefixtures("single_thread")
EXCERPT = Path(__file__).resolve().parents[1] / "data" / "excerpt" / "train"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    texts = [p.read_text(encoding="utf-8") for p in sorted(EXCERPT.glob("*.txt"))]
    tokenizer = Tokenizer.train(texts, vocab_size=512)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=2, segment_len=64)
    folder = tmp_path_factory.mktemp("model") / "small"
    save_pretrained(InfiniTransformer(config), tokenizer, folder)
    return folder


def test_demo_prints_one_table_and_writes_its_plots(small_model, tmp_path):
    lines: list[str] = []
    summary = run_demo(
        str(small_model),
        passkey_model=None,
        out_dir=tmp_path,
        short_length=600,
        long_length=3000,
        log=lines.append,
    )
    text = "\n".join(lines)
    for row in ("passkey accuracy", "memory on", "memory gated off", "tokens/s", "peak resident memory"):
        assert row in text
    assert summary["passkey_tokens"] > 3 * 500 + 2500
    assert summary["ppl_memory_on"] > 1 and summary["ppl_memory_off"] > 1
    for name in ("gates.png", "ppl.png"):
        assert (tmp_path / name).stat().st_size > 1000
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert set(saved) == {"summary", "ppl", "passkey"}
    # three keys per cell by default, the long prompt included (one key is an anecdote)
    assert [(c["length"], c["trials"]) for c in saved["passkey"]["cells"]] == [(600, 3)] * 3 + [(3000, 3)]
    assert "/3) |" in text


def test_held_out_excerpt_ships_with_the_package():
    assert "Emma" in held_out_excerpt()[:2000]


def test_demo_cli_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "infini_attention.cli", "demo", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
