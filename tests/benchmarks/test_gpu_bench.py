"""benchmarks/gpu_bench.py, the prepared GPU benchmark, at its ``--quick`` sizes on the CPU: every
part runs and reports finite numbers, and the table (its own and the combined one of bench.sh)
shows each ratio against its target. A few seconds; the CUDA-only lines are not exercised."""

from __future__ import annotations

import json
import math

import pytest


@pytest.fixture(scope="module")
def gpu_bench(import_benchmark):
    return import_benchmark("gpu_bench")


@pytest.fixture(scope="module")
def quick(single_thread, gpu_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench")
    args = ["--quick", "--device", "cpu", "--dtype", "float32"]
    rc = gpu_bench.main([*args, "--json", str(out / "g.json"), "--markdown", str(out / "g.md")])
    return rc, out / "g.json", (out / "g.md").read_text()


def numbers(x):
    if isinstance(x, bool):
        return
    if isinstance(x, int | float):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from numbers(v)
    elif isinstance(x, list | tuple):
        for v in x:
            yield from numbers(v)


def test_every_part_runs_with_finite_numbers(gpu_bench, quick):
    rc, path, _ = quick
    res = json.loads(path.read_text())["results"]
    assert rc == 0
    assert set(res) == set(gpu_bench.PARTS)
    for part, r in res.items():
        assert "error" not in r and "skipped" not in r, (part, r)
        values = list(numbers(r))
        assert values and all(math.isfinite(v) for v in values), part
    sizes = gpu_bench.QUICK
    assert len(res["layer"]["rows"]) == len(sizes.layer_T) * len(sizes.layer_N) * len(sizes.updates)
    assert all(row["check"]["ok"] and row["ratio"] > 0 for row in res["layer"]["rows"])
    assert set(res["train"]["efficiency"]) == {"ffn_step", f"square_{sizes.mm_square}"}
    assert [row["tokens"] for row in res["memory"]["rows"]] == list(sizes.memory)
    assert res["memory"]["ratio_longest_over_shortest"] > 0
    assert res["decode"]["long_tokens"] == max(sizes.memory) and res["decode"]["ratio"] > 0


def test_table_shows_the_ratios_and_targets(quick):
    _, path, table = quick
    res = json.loads(path.read_text())["results"]
    for row in res["layer"]["rows"]:
        assert f"T={row['T']} N={row['N']} {row['update']}" in table
        assert f"| {row['ratio']:.3f}x | <= 1.15x |" in table
    for frac in res["train"]["efficiency"].values():
        assert f"| {100 * frac:.1f}% | >= 40% |" in table
    assert f"| {res['memory']['ratio_longest_over_shortest']:.3f}x | <= 1.1x |" in table
    assert f"| decode ratio, long / short context | {res['decode']['ratio']:.3f}x | <= 1.1x |" in table


def test_combine_makes_one_table_and_names_what_is_missing(gpu_bench, quick, tmp_path):
    _, path, _ = quick
    doc = json.loads(path.read_text())
    layer_only = tmp_path / "layer.json"
    layer_only.write_text(json.dumps({"meta": doc["meta"], "results": {"layer": doc["results"]["layer"]}}))
    failed = tmp_path / "train.json"
    failed.write_text(
        json.dumps({"meta": doc["meta"], "results": {"train": {"error": "OutOfMemoryError: x"}}})
    )
    op = tmp_path / "op.json"
    row = {"T": 4096, "N": 512, "update": "delta", "fast_ms": 9.5, "naive_ms": None, "full_ms": 1.3}
    op.write_text(json.dumps({"machine": {}, "config": {"dtype": "bfloat16"}, "results": [row]}))
    peer = tmp_path / "peer.json"
    median = {
        "stream": {"ours_segments": 1.0, "peer_segments": 4.0, "ours_one_call": 0.5},
        "train": {"ours": 1.0, "peer": 1.5},
    }
    targets = {
        "streaming_>=3x (per segment)": True,
        "streaming_>=3x (ours one call)": True,
        "training_>=2x": False,
    }
    peer.write_text(
        json.dumps({"meta": {"peer_version": "0.2.1"}, "median_s": median, "targets_met": targets})
    )
    table = gpu_bench.combine([layer_only, failed, op, peer, tmp_path / "absent.json"])
    assert table.count("| benchmark | measured | target | met |") == 1
    assert f"| {doc['results']['layer']['rows'][0]['ratio']:.3f}x | <= 1.15x |" in table
    assert "| train | failed: OutOfMemoryError: x | | |" in table
    assert "| memory | no result" in table and "| decode | no result" in table
    assert (
        "op fwd+bwd (bfloat16), T=4096 N=512 delta: naive skipped, "
        "full SDPA 1.3 ms (speed-up vs full 0.14x) | 9.5 ms |" in table
    )
    assert "| 4.00x | >= 3x | yes |" in table and "| 1.50x | >= 2x | no |" in table
    assert "| absent.json | unreadable:" in table
