"""Measured choices kept per machine: which of several equivalent ways runs fastest here.

What is fastest differs from machine to machine (the same convolution ran 6x faster as one
matmul than as XLA's own kernel on one 2-core machine, and 1.2x on another), so fntrain times the
candidates once and keeps the answer in a small JSON file per kind of choice, under the
user's cache directory: ``$FNTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fntrain``, else
``~/.cache/fntrain``. Each answer is filed under :func:`machine`, so a cache copied to, or
shared with, another machine (or another jax version) is not used there.

The cache only saves time: a file that cannot be read or written is ignored (the choice is
timed again), and it never decides anything a forced setting says otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Optional


def cache_dir() -> Path:
    """Where measured choices are kept (created when the first one is stored)."""
    if os.environ.get("FNTRAIN_CACHE_DIR"):
        return Path(os.environ["FNTRAIN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fntrain"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


@functools.lru_cache(maxsize=1)
def machine() -> str:
    """What a measurement is valid for: CPU model, cores this process may use, jax and jaxlib.

    Example: ``"AMD EPYC 9R14; 2 cores; jax 0.10.2; jaxlib 0.10.2"``.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{_cpu_model()}; {cores} cores; jax {_version('jax')}; jaxlib {_version('jaxlib')}"


def _path(kind: str) -> Path:
    return cache_dir() / f"{kind}.json"


def _read(kind: str) -> dict:
    try:
        data = json.loads(_path(kind).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup(kind: str, key: str) -> Optional[Any]:
    """The stored answer for ``key`` on this machine, or None."""
    entries = _read(kind).get(machine())
    return entries.get(key) if isinstance(entries, dict) else None


def store(kind: str, key: str, value: Any) -> bool:
    """Keeps ``value`` for ``key`` on this machine; False (and nothing raised) where the file
    cannot be written. The file is replaced whole (written beside it, then renamed), so a
    reader never sees half of it; of two processes storing at once, one's new key may be lost,
    and is timed again next time."""
    data = _read(kind)
    entries = data.get(machine())
    data[machine()] = {**(entries if isinstance(entries, dict) else {}), key: value}
    path, tmp = _path(kind), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{kind}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
    return True
