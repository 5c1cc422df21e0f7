"""benchmarks/memory_growth.py on the shipped passkey model: the paper's delta rule grows M with the
stream (so the printed norms must rise), and bad --after values are refused with one line."""

from __future__ import annotations

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
