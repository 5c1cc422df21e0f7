"""Plots: the gate heatmap (Figure 3) and perplexity by position write real PNG files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.eval.perplexity import evaluate_ppl

plots = pytest.importorskip("infini_attention.eval.plots", reason="needs matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_model() -> InfiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, d_model=16, n_layers=3, n_heads=4, segment_len=8)
    m = InfiniTransformer(config).eval()
    with torch.no_grad():
        for gate in m.gates():  # per layer: local-only, memory-only and two mixers
            gate.copy_(torch.tensor([-5.0, 5.0, 0.0, 0.3]))
    return m


def is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 2000


def test_gate_scores_and_summary():
    model = tiny_model()
    scores = plots.gate_scores(model)
    assert scores.shape == (3, 4)
    assert np.allclose(scores[:, 2], 0.5) and scores[0, 0] < 0.01 and scores[0, 1] > 0.99
    s = plots.gate_summary(scores)
    assert (s["heads"], s["near_0"], s["near_1"], s["mixers"]) == (12, 3, 3, 6)
    assert s["share_mixers"] == 0.5 and s["layers_with_a_local_head"] == 3


def test_plot_gates_writes_a_png(tmp_path):
    out = tmp_path / "gates.png"
    summary = plots.plot_gates(tiny_model(), out)
    assert is_png(out)
    assert summary["near_1"] == 3


def test_plot_ppl_from_results_and_from_json(tmp_path):
    model = tiny_model()
    docs = [torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    results = evaluate_ppl(model, docs, buckets=(0, 8, 16, 64))  # the 16-64 bucket is empty
    out = tmp_path / "ppl.png"
    plots.plot_ppl(results, out)
    assert is_png(out)
    # as written by `infini eval ppl --json`, and with the memory-on numbers only
    reloaded = json.loads(json.dumps(results))
    out2 = tmp_path / "ppl2.png"
    plots.plot_ppl(reloaded, out2)
    assert is_png(out2)
    on_only = evaluate_ppl(model, docs, buckets=(0, 8), memory_off=False)
    out3 = tmp_path / "ppl3.png"
    plots.plot_ppl(on_only, out3)
    assert is_png(out3)


def test_plot_ppl_rejects_other_json(tmp_path):
    with pytest.raises(ValueError, match="not perplexity results"):
        plots.plot_ppl({"cells": []}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no tokens"):
        plots.plot_ppl(
            {"buckets": [{"label": "0-2K", "tokens": 0, "ppl": None}], "overall": {}}, tmp_path / "x.png"
        )
    assert not (tmp_path / "x.png").exists()
