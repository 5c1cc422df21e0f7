"""``infini train``: the shipped smoke config runs; every user error is one line on stderr, exit 2."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from infini_attention.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.toml"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Prepared data goes to a temporary cache, never the user's."""
    monkeypatch.setenv("INFINI_CACHE", str(tmp_path_factory.getbasetemp() / "infini-cache"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("infini"), err
    return err[0]


def test_missing_config_subprocess_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "infini_attention.cli", "train", "--config", "missing.toml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "infini: error: config file not found: missing.toml"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[optim]\n", "[optim]\nlrr = 3e-3\n"), "unknown key 'lrr' in [optim]"),
        (("seq_len = 256", "seq_len = -256"), "[data] seq_len must be a positive int, got -256"),
        (("segment_len = 64", "segment_len = 0"), "[model] segment_len must be a positive int, got 0"),
        (("[train]", "[train]\n[extra]"), "unknown section [extra]"),
        (("[model]", "[model"), "cannot parse"),
        (('corpus = "data/excerpt"', 'corpus = "no/such/corpus/here"'), "corpus not found"),
    ],
)
def test_config_errors(tmp_path, capsys, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(SMOKE.read_text().replace(*edit))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys)


def test_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(SMOKE), "--max-steps", "0"])
    assert info.value.code == 2
    assert "--max-steps: expected a positive integer, got 0" in one_line_error(capsys)
    with pytest.raises(SystemExit):
        main(["train"])
    assert "--config" in one_line_error(capsys)
    assert main(["train", "--config", str(SMOKE), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in one_line_error(capsys)


def test_smoke_config_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["train", "--config", str(SMOKE), "--out", str(out), "--max-steps", "2"]) == 0
    assert (
        capsys.readouterr().out.strip().endswith(f"final checkpoint: {out / 'checkpoints' / 'step-000002'}")
    )
    assert main(["train", "--config", str(SMOKE), "--out", str(out), "--max-steps", "3", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert main(["train", "--config", str(SMOKE), "--out", str(out)]) == 2
    assert "already holds a training run" in one_line_error(capsys)


@pytest.mark.slow
def test_full_smoke_run_under_a_minute(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["train", "--config", str(SMOKE), "--out", str(tmp_path / "smoke")]) == 0
    assert time.perf_counter() - start < 60
