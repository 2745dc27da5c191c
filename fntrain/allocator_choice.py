"""The allocator setting a config trains fastest with on this machine: measured, kept, applied.

Which of fntrain's malloc settings (:mod:`fntrain.malloc`) is fastest depends on the machine
and the workload: one arena for all threads made a CNN's step 1.4x faster on one 2-core machine
and a small MLP's 18% slower on another. ``fntrain tune CONFIG`` trains the config briefly in
a fresh process per candidate (:data:`CANDIDATES`), compares their steady examples/s (the
loop's own ``summary.json`` figure), and keeps the fastest in the cache of :mod:`fntrain.tuning`
(``allocator.json``), filed under the machine and :func:`workload_key`. ``fntrain train`` of a
config with such an answer then applies it before JAX starts (for ``hugetlb``, by starting
itself again with ``GLIBC_TUNABLES``). An explicit ``FNTRAIN_MALLOC`` always wins over it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Callable, Optional

from fntrain import malloc, tuning
from fntrain.errors import ConfigError

CANDIDATES = ("tuned", "system", "hugetlb")
CACHE_KIND = "allocator"
MARGIN = 1.03  # another setting replaces fntrain's default only when this much faster
REEXEC_MARK = "FNTRAIN_ALLOCATOR_REEXEC"  # set in the restarted process: never restart twice


def workload_key(config) -> str:
    """What the allocator's speed depends on: the model, the data (and its batch size), the
    precision and the dispatch size; not the seed, run length, output or logging. A hash,
    e.g. ``"3f2a9c0d1e4b5a67"``."""
    from fntrain.config import config_to_dict

    plain = config_to_dict(config)
    parts = {"model": plain["model"], "data": plain["data"], "precision": plain["precision"],
             "steps_per_dispatch": plain["loop"]["steps_per_dispatch"]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def available() -> list[str]:
    """The candidates this machine can run: ``hugetlb`` needs glibc 2.35 and transparent huge
    pages not switched off."""
    found = ["tuned", "system"]
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = "[never]" not in f.read()
    except OSError:
        thp = False
    if thp and _glibc_version() >= (2, 35):
        found.append("hugetlb")
    return found


def _glibc_version() -> tuple[int, ...]:
    libc = malloc._glibc()
    if libc is None:
        return (0,)
    import ctypes

    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return tuple(int(p) for p in libc.gnu_get_libc_version().decode().split(".")[:2])


def environment(mode: str, base: Optional[dict] = None) -> dict:
    """``base`` (default ``os.environ``) with ``FNTRAIN_MALLOC=mode``; for ``hugetlb`` also
    glibc's tunable, added to any ``GLIBC_TUNABLES`` already set."""
    env = dict(os.environ if base is None else base, FNTRAIN_MALLOC=mode)
    if mode == "hugetlb" and malloc.HUGETLB_TUNABLE not in env.get("GLIBC_TUNABLES", "").split(":"):
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), malloc.HUGETLB_TUNABLE]))
    return env


def choose(rates: dict[str, float]) -> str:
    """The fastest of the measured ``{mode: examples/s}``; fntrain's default (``tuned``) unless
    another is at least :data:`MARGIN` times faster, so noise does not move it."""
    best = max(rates, key=rates.get)
    if "tuned" in rates and rates[best] < MARGIN * rates["tuned"]:
        return "tuned"
    return best


def measure(config_path: str, overrides: list[str], steps: int, say: Callable[[str], None]) -> dict[str, float]:
    """Steady examples/s of a short run of the config (``steps`` steps, logged every
    ``steps // 4``; no checkpoints, a constant learning rate, whose speed is the same, so that
    a schedule's warm-up need not fit in it) in a fresh process per available candidate."""
    every = max(1, steps // 4)
    short = ["loop.kind=steps", f"loop.num_steps={steps}", f"log.every_steps={every}", "log.progress=none",
             "checkpoint.every_steps=null", "checkpoint.every_minutes=null", "optimizer.schedule={name: constant}"]
    rates = {}
    with tempfile.TemporaryDirectory(prefix="fntrain-tune-") as tmp:
        for mode in available():
            out = os.path.join(tmp, mode)
            command = [sys.executable, "-m", "fntrain", "train", config_path, *overrides, *short, f"output_dir={out}"]
            done = subprocess.run(command, env=environment(mode), capture_output=True, text=True)
            if done.returncode:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise ConfigError(f"{config_path}: the FNTRAIN_MALLOC={mode} run failed (exit {done.returncode}): {last}")
            with open(os.path.join(out, "summary.json")) as f:
                rates[mode] = json.load(f)["steady_examples_per_second"]
            say(f"{mode}: {rates[mode]:,.0f} examples/s")
    return rates


def remember(config, rates: dict[str, float]) -> tuple[str, bool]:
    """Stores the choice from ``rates`` for the config's workload on this machine; returns it,
    and whether it could be stored."""
    mode = choose(rates)
    return mode, tuning.store(CACHE_KIND, workload_key(config), {"mode": mode, "examples_per_second": rates})


def measured(config) -> Optional[str]:
    """The stored choice for the config's workload on this machine, or None."""
    entry = tuning.lookup(CACHE_KIND, workload_key(config))
    mode = entry.get("mode") if isinstance(entry, dict) else None
    return mode if mode in CANDIDATES else None


def apply(config, argv: list[str], may_restart: bool) -> None:
    """Before JAX starts: applies the measured choice for the config, unless ``FNTRAIN_MALLOC``
    is set. For ``hugetlb`` without its tunable in this process, where ``may_restart``, replaces
    the process with ``python -P -m fntrain *argv`` under :func:`environment` (once)."""
    if os.environ.get("FNTRAIN_MALLOC") or (mode := measured(config)) is None:
        return
    if mode == "hugetlb" and may_restart and not malloc.huge_pages() and not os.environ.get(REEXEC_MARK):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-P", "-m", "fntrain", *argv], environment(mode) | {REEXEC_MARK: "1"})
    malloc.tune(mode, reason="measured fastest for this config on this machine by fntrain tune")
