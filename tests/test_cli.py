"""The console script: help works, errors are one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infini_attention.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infini_attention.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help():
    result = run("--help")
    assert result.returncode == 0
    assert "infini" in result.stdout and "check" in result.stdout


def test_check_passes(capsys):
    assert main(["check", "--seed", "3"]) == 0
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [("bogus",), ("check", "--seed", "x"), ("check", "--device", "cuda:99"), ("check", "--device", "tpu")],
)
def test_errors_are_one_line_without_traceback(args):
    result = run(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("infini") and "Traceback" not in result.stderr


def test_under_torchrun_only_rank_0_prints_the_error(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--config", "no-such-file.toml"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--config", "no-such-file.toml"]) == 2
    assert capsys.readouterr().err.startswith("infini: error:")
