"""benchmarks/op_bench.py at toy sizes: every implementation is checked against the naive op before
it is timed, the compiled op included, and the table and JSON carry its figures. A wrong op must
stop the run, so one test breaks the fast op and expects the refusal."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def op_bench(import_benchmark):
    return import_benchmark("op_bench")


TOY = ["--T", "200", "--N", "64", "--heads", "2", "--dk", "8", "--dv", "8", "--repeats", "1"]


def test_compiled_column(op_bench, single_thread, tmp_path, capsys):
    out = tmp_path / "op.json"
    op_bench.main([*TOY, "--update", "delta", "--compile", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["compiled_check"]["ok"] and row["compiled_check"]["grad_max_abs_diff"] < 1e-4
    assert row["compiled_ms"] > 0 and len(row["times_ms"]["compiled"]) == 1
    assert "compiled vs full" in capsys.readouterr().out


def test_no_compiled_column_without_the_flag(op_bench, single_thread, tmp_path, capsys):
    out = tmp_path / "op.json"
    op_bench.main([*TOY, "--update", "linear", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["compiled_ms"] is None and row["times_ms"]["compiled"] == []
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| T |"))
    assert "compiled" not in header


def test_a_wrong_op_is_not_timed(op_bench, single_thread, monkeypatch):
    real = op_bench.infini_attention

    def off_by_a_little(*args, **kwargs):
        out, state = real(*args, **kwargs)
        return out + 0.01, state

    monkeypatch.setattr(op_bench, "infini_attention", off_by_a_little)
    with pytest.raises(SystemExit, match="disagrees with naive"):
        op_bench.main([*TOY, "--update", "linear", "--no-full"])
