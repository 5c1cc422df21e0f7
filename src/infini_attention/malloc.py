"""Keep freed memory in the C heap (Linux, glibc) instead of handing each large buffer back.

Why: PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves buffers above its
mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh ``mmap`` and unmaps them when they
are freed, so the next forward or backward pass touches brand-new pages, which the kernel faults
in and zeroes one by one. Measured on the fast op (T = 16K, N = 512, forward + backward, 1 thread):
355K-423K minor page faults per pass (1.4-1.7 GB) and 0.6-1.2 s of system time, 35-40% of its CPU
time; with the thresholds below 22K-38K faults and 0.1-0.3 s (docs/performance.md).

The price: memory freed inside a pass stays in the process (the heap keeps its high-water mark up
to ``trim_threshold``) rather than going back to the OS between passes. For training and streaming
that is what the next pass needs anyway. ``infini`` applies it to its own process by default
(``INFINI_MALLOC=system`` turns it off); a library user opts in with ``keep_freed_memory()``.

The opposite, for training rows too long for the machine's memory: ``release_freed_memory()``
(``INFINI_MALLOC=release``) fixes the mmap threshold at 64 KiB, so every buffer from 64 KiB up is
mapped and handed back when freed. A training step over one 64K-token passkey row of the shipped
passkey model (N = 128, checkpointed segments) then peaked at 617 MB instead of 1,274 MB, and took
1.6x the time (docs/performance.md): freed per-segment buffers no longer stay behind in the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_INT_MAX = 2**31 - 1
ENV = "INFINI_MALLOC"  # "system": leave malloc as it is in the CLI


def keep_freed_memory(
    mmap_threshold: int = 1 << 30, trim_threshold: int = _INT_MAX, top_pad: int = 64 << 20
) -> bool:
    """Raise glibc's mmap and trim thresholds for this process. Returns True when applied, False
    where there is no glibc (macOS, Windows, musl): then nothing changes.

    ``mmap_threshold``: buffers up to this size come from the heap (and are reused) rather than
    from a fresh mapping; ``trim_threshold``: free memory at the top of the heap kept before it is
    returned; ``top_pad``: extra heap grown per request. All in bytes, at most 2**31 - 1 (C int).
    """
    _check_c_int("mmap_threshold", mmap_threshold)
    _check_c_int("trim_threshold", trim_threshold)
    _check_c_int("top_pad", top_pad)
    libc = _glibc()
    if libc is None:
        return False
    settings = (
        (_M_MMAP_THRESHOLD, mmap_threshold),
        (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad),
    )
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def release_freed_memory(mmap_threshold: int = 64 << 10) -> bool:
    """Fix glibc's mmap threshold low (64 KiB): buffers from that size up are mapped and handed
    back to the OS when freed. Less resident memory for long training rows, more page faults
    (slower). Returns True when applied, False where there is no glibc."""
    _check_c_int("mmap_threshold", mmap_threshold)
    libc = _glibc()
    if libc is None:
        return False
    # setting it also stops glibc from raising it as buffers are freed (its dynamic threshold)
    return libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1


MODES = ("keep", "system", "release")


def apply(mode: str, source: str = "mode") -> bool:
    """``keep`` (``keep_freed_memory()``), ``system`` (nothing) or ``release``
    (``release_freed_memory()``); returns whether a setting was applied."""
    if mode not in MODES:
        raise ValueError(f"{source} must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "system":
        return False
    return keep_freed_memory() if mode == "keep" else release_freed_memory()


def apply_from_env() -> bool:
    """What the CLI does at start: :func:`apply` with ``INFINI_MALLOC`` (default ``keep``)."""
    return apply(os.environ.get(ENV, "keep"), ENV)


def _check_c_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT_MAX:
        raise ValueError(f"{name} must be an int in [0, 2**31 - 1], got {value!r}")


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None
