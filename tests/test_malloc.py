"""glibc's thresholds raised: large buffers are reused instead of mapped and faulted in anew."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from infini_attention import malloc
from infini_attention.cli import main

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# allocate, touch and free a 64 MiB tensor 11 times; print the page faults of the last 10
FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from infini_attention.malloc import keep_freed_memory
    assert keep_freed_memory()
torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_buffers_are_reused_without_page_faults():
    plain, kept = faults("system"), faults("keep")
    assert plain > 10 * 16_000  # 16K pages of 4 KiB faulted in anew for each 64 MiB buffer
    assert kept < plain / 4, (plain, kept)  # measured: 163,845 against 16,384-32,768 (the heap grows once)


# free a 16 MiB buffer (glibc then raises its mmap threshold to 16 MiB), then take 8 MiB: from
# the heap by default, a fresh mapping with release (its threshold is fixed)
MAPPED = """
import ctypes, sys, torch
class Info(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "release":
    from infini_attention.malloc import release_freed_memory
    assert release_freed_memory()
torch.ones(4 << 20)
before = libc.mallinfo2().hblkhd
x = torch.ones(2 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def mapped_bytes(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", MAPPED, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_release_keeps_mapping_buffers():
    assert mapped_bytes("system") == 0
    assert mapped_bytes("release") >= 8 << 20


def test_bad_values():
    with pytest.raises(ValueError, match="mmap_threshold"):
        malloc.keep_freed_memory(mmap_threshold=-1)
    with pytest.raises(ValueError, match="trim_threshold"):
        malloc.keep_freed_memory(trim_threshold=2**31)
    with pytest.raises(ValueError, match="mmap_threshold"):
        malloc.release_freed_memory(mmap_threshold=True)


def test_env_switch(monkeypatch):
    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv("INFINI_MALLOC", "system")
    assert malloc.apply_from_env() is False and not calls
    monkeypatch.setenv("INFINI_MALLOC", "keep")
    assert malloc.apply_from_env() is True and calls == [1]
    monkeypatch.setattr(malloc, "release_freed_memory", lambda: calls.append(2) or True)
    monkeypatch.setenv("INFINI_MALLOC", "release")
    assert malloc.apply_from_env() is True and calls == [1, 2]
    monkeypatch.setenv("INFINI_MALLOC", "fast")
    with pytest.raises(ValueError, match="INFINI_MALLOC must be one of keep, system, release"):
        malloc.apply_from_env()


def test_cli_applies_it_and_reports_a_bad_setting_in_one_line(monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append(1) or True)
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    argv = ["plot", "passkey", "--results", str(bad), "--out", str(tmp_path / "x.png")]
    assert main(argv) == 2 and calls == [1]  # applied before the command ran (and failed)
    capsys.readouterr()
    monkeypatch.setenv("INFINI_MALLOC", "fast")
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == "infini: error: INFINI_MALLOC must be one of keep, system, release, got 'fast'"
    )
