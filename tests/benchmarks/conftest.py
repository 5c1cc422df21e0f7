"""The benchmark scripts are not a package: they import each other as top-level modules (perf,
op_bench, issue_model), so tests import them with ``benchmarks/`` on ``sys.path``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def import_benchmark():
    """``import_benchmark("op_bench")`` -> the module (``benchmarks/`` on the path per test module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        yield importlib.import_module
