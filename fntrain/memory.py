"""Whether a model and its batches fit in memory, judged before anything is allocated.

``check_fits`` takes the parameter shapes from ``jax.eval_shape(net.init, ...)`` (no
allocation), counts what training holds at least (parameters, gradients and an optimizer's
two moments: ``COPIES`` copies of the parameters, plus the largest batch) and refuses, as a
ConfigError naming the estimate and the key to change, what cannot fit in the device's free
memory (on CPU: the machine's available memory, within the process's address-space and
cgroup limits). Activations are not counted, so passing is no promise; refusing is a sure
failure avoided. ``FNTRAIN_MEMORY_CHECK=off`` skips the check.
"""

from __future__ import annotations

import math
import os
import resource
from typing import Any, Optional

import jax
import numpy as np

from fntrain.errors import ConfigError

COPIES = 4  # parameters, gradients and two optimizer moments (adam's; sgd keeps fewer)


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays (or ``jax.ShapeDtypeStruct``\\s) in ``tree``."""
    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def gib(n: float) -> str:
    """``n`` bytes for a message: ``"1.5 GiB"``, ``"12 MiB"``, ``"3.2 TiB"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1024:.3g} KiB"


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_available() -> Optional[int]:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - used


def _address_space_available() -> Optional[int]:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        size = 0
    return soft - size


def available_bytes(device: jax.Device) -> tuple[Optional[int], str]:
    """Free memory on ``device`` and where the number comes from (``(None, ...)``: unknown)."""
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"free on {device.device_kind}"
        return None, device.platform
    known = [(n, what) for n, what in (
        (_meminfo_available(), "available on this machine"),
        (_cgroup_available(), "left under this container's memory limit"),
        (_address_space_available(), "left under this process's address-space limit (ulimit -v)"),
    ) if n is not None]
    return min(known) if known else (None, "cpu")


def check_fits(param_shapes: Any, batch_bytes: int, *, model: str, shards: int = 1) -> None:
    """Refuses a model whose training cannot fit in the memory of the first device.

    Args:
      param_shapes: ``jax.eval_shape(net.init, key, x)``: parameters and model state.
      batch_bytes: the largest batch (training or evaluation), inputs and targets.
      model: how the message names the model, e.g. ``"model 'mlp'"``.
      shards: devices the parameters are split over (fsdp); 1: each device holds them all.

    Raises:
      ConfigError: the estimate exceeds the free memory.
    """
    if os.environ.get("FNTRAIN_MEMORY_CHECK", "").lower() in ("off", "0", "false"):
        return
    params = tree_bytes(param_shapes)
    need = COPIES * params / shards + batch_bytes
    free, where = available_bytes(jax.devices()[0])
    if free is None or need <= free:
        return
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(param_shapes))
    if COPIES * params / shards >= batch_bytes:
        key, fix = "model", "make the model smaller (its widths, depth or channels)"
    else:
        key, fix = "data.batch_size", "lower data.batch_size (and data.eval_batch_size)"
    raise ConfigError(
        f"{key}: training {model} needs at least {gib(need)} ({count:.3g} parameters, {gib(params)}, "
        f"x{COPIES} for gradients and optimizer state{f' over {shards} devices' if shards > 1 else ''}, "
        f"plus {gib(batch_bytes)} per batch), more than the {gib(max(free, 0))} {where}; {fix} "
        f"(FNTRAIN_MEMORY_CHECK=off skips this estimate)"
    )
