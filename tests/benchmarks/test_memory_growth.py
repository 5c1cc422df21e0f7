"""benchmarks/memory_growth.py on the shipped passkey model: the paper's delta rule grows M with the
stream (so the printed norms must rise), and bad --after values are refused with one line."""

from __future__ import annotations

import dataclasses
import re

import pytest


@pytest.fixture(scope="module")
def memory_growth(import_benchmark):
    return import_benchmark("memory_growth")


def test_paper_rule_memory_grows_with_the_stream(memory_growth, single_thread, capsys):
    assert memory_growth.main(["--model", "passkey", "--length", "4096", "--after", "2,8,31"]) == 0
    out = capsys.readouterr().out
    rows = [list(map(float, line.split(":")[1].split())) for line in out.splitlines() if "segments:" in line]
    assert [int(n) for n in re.findall(r"after\s+(\d+) segments", out)] == [2, 8, 31]
    for layer in zip(*rows, strict=True):
        assert layer[0] < layer[1] < layer[2], f"|M| did not grow: {layer}"


@pytest.mark.parametrize("after", ["0,4", "4,x", "9999"])
def test_bad_after_is_refused(memory_growth, capsys, after):
    assert memory_growth.main(["--model", "passkey", "--length", "4096", "--after", after]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --after") and err.count("\n") == 1


def test_write_strengths_are_reported(memory_growth, single_thread, capsys, tmp_path):
    """A model with learned write strengths: their means per layer, each in (0, 1), on one line."""
    import torch

    from infini_attention import InfiniTransformer, load_pretrained
    from infini_attention.pretrained import save_pretrained

    shipped, tokenizer = load_pretrained("passkey")
    config = dataclasses.replace(shipped.config, write_strength=True, write_strength_init=1.0)
    torch.manual_seed(0)
    save_pretrained(InfiniTransformer(config), tokenizer, tmp_path / "m")
    assert memory_growth.main(["--model", str(tmp_path / "m"), "--length", "4096", "--after", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("mean write strength per layer")
    means = [float(x) for x in re.findall(r"\d\.\d+", out[-1])]
    assert len(means) == 2 * config.n_layers and all(0.5 < m < 0.9 for m in means)  # sigmoid(1) = 0.73
