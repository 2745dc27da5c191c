"""Keeps glibc from returning XLA:CPU's per-step working memory to the kernel.

XLA:CPU allocates each step's temporary buffers afresh. With glibc's defaults,
blocks above the (dynamic) mmap threshold are ``mmap``-ed and ``munmap``-ed every
step, so the kernel zero-fills and faults the same pages in again each step (on a
small transformer, ~46,000 page faults and ~80 ms of kernel time per step).
Raising the mmap and trim thresholds keeps freed blocks in the heap for reuse.
XLA:CPU's worker threads allocate from glibc's per-thread arenas, whose heaps are at
most 64 MiB each, so a larger block (a step's temporaries, e.g. a convolution's
115 MB im2col patches) is ``mmap``-ed whatever the threshold; one arena for all
threads (``M_ARENA_MAX=1``) serves such blocks from the main heap too (W3's train
step, K=1, 2 cores: 570 -> 940 examples/s). XLA makes few, large allocations per
step, so one arena lock costs little.
The costs: the process's resident memory stays near its peak, which is what a training
process does anyway; and the one arena's lock makes a small, allocation-heavy step a little
slower (the hand-written W1 MLP step: 3-6%, interleaved processes). glibc's
``glibc.malloc.hugetlb=1`` tunable also removes most of the faults with per-thread arenas
kept (W4: 212 -> 164 ms/step, against 155 with one arena), but it can only be set in
``GLIBC_TUNABLES`` before the process starts, not from an import.

Applied when ``fntrain`` is imported, on Linux with glibc only; the setting
affects later allocations, so importing fntrain after jax still helps. Set
``FNTRAIN_MALLOC=system`` to keep glibc's defaults; a preloaded tcmalloc or
jemalloc is detected and left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8  # 1: threads that have no arena yet share the main one (set before XLA starts them)
# Blocks up to 1 GiB come from the heap; freed memory is kept until 2 GiB lie unused at its top.
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = 1 << 31

status = "not applied"


def _preloaded_allocator() -> str | None:
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    return None


def tune() -> str:
    """Applies the thresholds once; returns a description of the allocator in use."""
    global status
    if status != "not applied":
        return status
    if os.environ.get("FNTRAIN_MALLOC", "").lower() == "system":
        status = "glibc malloc, defaults (FNTRAIN_MALLOC=system)"
    elif not sys.platform.startswith("linux"):
        status = "system allocator"
    elif (other := _preloaded_allocator()) is not None:
        status = f"{other} (preloaded)"
    else:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.gnu_get_libc_version  # absent in musl
            ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            ok = ok and libc.mallopt(_M_ARENA_MAX, 1)
            status = "glibc malloc, tuned by fntrain" if ok else "glibc malloc, defaults (mallopt refused)"
        except (OSError, AttributeError):
            status = "system allocator"
    return status
