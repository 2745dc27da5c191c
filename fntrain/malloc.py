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

When it is applied: ``import fntrain`` calls :func:`tune`, which changes the allocator of
the whole process, so it does so only where JAX will run on XLA:CPU (on a GPU or TPU the
host allocator is not the bottleneck, and a library should not change it unasked). The
platform is decided before JAX starts its threads (``M_ARENA_MAX`` only affects threads
started later) and without initialising a backend, in this order:

1. JAX's backends are already initialised: ``jax.default_backend() == "cpu"``.
2. ``JAX_PLATFORMS`` (or ``jax.config.jax_platforms``) is set: its first platform, JAX's
   default, is ``cpu``.
3. Otherwise: no accelerator plugin is installed where JAX looks for one (``jax_plugins``
   entry points and namespace modules, such as ``jax_cuda12_plugin``, and ``libtpu``). A CUDA
   or ROCm plugin without its device node (``/dev/nvidiactl``, ``/dev/kfd``) does not count:
   JAX falls back to the CPU there.

Only on Linux with glibc; a preloaded tcmalloc, jemalloc or mimalloc is left alone. The
setting affects later allocations, so importing fntrain after jax still helps.

Switching it: ``FNTRAIN_MALLOC=system`` keeps glibc's defaults, ``FNTRAIN_MALLOC=tuned``
tunes whatever the platform, ``FNTRAIN_MALLOC=hugetlb`` keeps glibc's per-thread arenas and
thresholds but serves the heap from transparent huge pages (the ``glibc.malloc.hugetlb=1``
tunable: it must be in ``GLIBC_TUNABLES`` when the process starts, which ``fntrain train``
arranges by starting itself again), unset (or ``auto``) decides as above. Which of these is
fastest differs between machines: ``fntrain tune CONFIG`` measures them for a config, and
``fntrain train`` then uses the fastest (:mod:`fntrain.allocator_choice`). From Python,
``fntrain.malloc.tune("tuned")``, ``tune("system")`` (restores glibc's default values) or
``tune()`` (decides again, e.g. once JAX has picked its backend). :data:`status` says what
was done and why.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import sys
import warnings

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8  # 1: threads that have no arena yet share the main one (set before XLA starts them)
# Blocks up to 1 GiB come from the heap; freed memory is kept until 2 GiB lie unused at its top.
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = 1 << 31
# glibc's defaults, for tune("system") after tuning. glibc stops adapting the mmap threshold
# once it is set, and arena_max 0 cannot be set back, so these are its starting values.
_GLIBC_DEFAULTS = {_M_MMAP_THRESHOLD: 128 << 10, _M_TRIM_THRESHOLD: 128 << 10, _M_ARENA_MAX: 8 * (os.cpu_count() or 1)}

MODES = ("auto", "tuned", "system", "hugetlb")
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
# A device node that exists where the plugin's hardware does (JAX falls back to the CPU otherwise).
_DEVICE_NODES = {"cuda": "/dev/nvidiactl", "rocm": "/dev/kfd"}

status = "not applied"
"""What :func:`tune` did and why, e.g. ``"glibc malloc, tuned by fntrain: JAX will run on XLA:CPU
(no accelerator plugin installed)"``."""

_tuned = False


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


def _initialised_backend() -> str | None:
    """JAX's default backend if JAX has already started one, else None (starting none)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    try:
        if bridge is not None and bridge.backends_are_initialized():
            return sys.modules["jax"].default_backend()
    except Exception:  # a private module: its API may change
        return None
    return None


def _requested_platforms() -> str:
    jax = sys.modules.get("jax")
    platforms = getattr(getattr(jax, "config", None), "jax_platforms", None) if jax else None
    return platforms or os.environ.get("JAX_PLATFORMS", "")


def _accelerator_plugins() -> list[str]:
    """The accelerator plugins JAX would load, found without importing them (or JAX)."""
    names = set()
    try:
        from importlib.metadata import entry_points

        names |= {ep.value.split(":")[0] for ep in entry_points(group="jax_plugins")}
    except Exception:  # broken package metadata must not break import fntrain
        pass
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        names |= {f"jax_plugins.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations)}
    if importlib.util.find_spec("libtpu") is not None:
        names.add("libtpu")
    return sorted(names)


def _has_hardware(plugin: str) -> bool:
    node = next((path for kind, path in _DEVICE_NODES.items() if kind in plugin), None)
    return node is None or os.path.exists(node)


def on_xla_cpu() -> tuple[bool, str]:
    """Whether JAX will run on XLA:CPU, and why fntrain thinks so; starts no backend.

    Returns:
      ``(on_cpu, reason)``, e.g. ``(False, "JAX_PLATFORMS=cuda")``.
    """
    backend = _initialised_backend()
    if backend is not None:
        return backend == "cpu", f"JAX's default backend is {backend}"
    platforms = _requested_platforms()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu", f"JAX_PLATFORMS={platforms}"
    plugins = _accelerator_plugins()
    present = [p for p in plugins if _has_hardware(p)]
    if present:
        return False, f"accelerator plugin {', '.join(present)} installed"
    if plugins:
        return True, f"{', '.join(plugins)} installed but no device found"
    return True, "no accelerator plugin installed"


def _glibc():
    """glibc's ``libc``, or None (another libc, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # absent in musl
        return libc
    except (OSError, AttributeError):
        return None


def _decision(mode: str | None, reason: str | None = None) -> tuple[bool, str]:
    """Whether to tune, and why."""
    if mode is None:
        env = os.environ.get("FNTRAIN_MALLOC", "").lower()
        if env in ("tuned", "system", "hugetlb"):
            return env == "tuned", f"FNTRAIN_MALLOC={env}"
        if env not in ("", "auto"):
            warnings.warn(f"FNTRAIN_MALLOC={env!r} is not one of {MODES}; deciding as for 'auto'.", stacklevel=3)
        mode = "auto"
    elif mode not in MODES:
        raise ValueError(
            f"fntrain.malloc.tune mode must be one of {MODES}, got {mode!r}: 'tuned' applies the "
            "settings, 'system' keeps glibc's defaults, 'hugetlb' keeps them with the heap on huge pages "
            "(GLIBC_TUNABLES, at process start), 'auto' applies them where JAX runs on XLA:CPU."
        )
    if mode != "auto":
        return mode == "tuned", reason or f"tune({mode!r})"
    on_cpu, why = on_xla_cpu()
    if on_cpu:
        return True, f"JAX will run on XLA:CPU ({why})"
    return False, f"{why}, not XLA:CPU (FNTRAIN_MALLOC=tuned tunes it anyway)"


def tune(mode: str | None = None, reason: str | None = None) -> str:
    """Applies, or undoes, fntrain's glibc malloc settings; records and returns :data:`status`.

    Args:
      mode: ``"tuned"`` applies them; ``"system"`` keeps glibc's defaults (restoring its default
        values if fntrain had tuned it; threads already sharing the main arena keep it);
        ``"hugetlb"`` is ``"system"`` for mallopt (the huge-page heap is glibc's tunable, read at
        process start); ``"auto"`` applies them only where JAX will run on XLA:CPU (:func:`on_xla_cpu`).
        ``None``, what ``import fntrain`` uses, reads ``FNTRAIN_MALLOC`` (default ``"auto"``).
      reason: why ``mode`` was chosen, for :data:`status` (default ``"tune('<mode>')"``).

    Returns:
      The new :data:`status`, e.g. ``"glibc malloc, defaults: JAX_PLATFORMS=cuda, not XLA:CPU
      (FNTRAIN_MALLOC=tuned tunes it anyway)"``.

    Raises:
      ValueError: ``mode`` is not one of :data:`MODES` or None.

    Example:
      >>> import fntrain
      >>> fntrain.malloc.tune("system")  # research code that wants glibc's allocator as it was
      "glibc malloc, default values restored: tune('system')"
    """
    global status, _tuned
    wanted, why = _decision(mode, reason)
    libc = _glibc()
    if libc is None:
        status = "system allocator (fntrain tunes glibc malloc on Linux only)"
    elif (other := _preloaded_allocator()) is not None:
        status = f"{other} (preloaded, left alone)"
    elif wanted:
        settings = {_M_MMAP_THRESHOLD: _MMAP_THRESHOLD, _M_TRIM_THRESHOLD: _TRIM_THRESHOLD, _M_ARENA_MAX: 1}
        _tuned = all(libc.mallopt(option, value) for option, value in settings.items())
        status = f"glibc malloc, tuned by fntrain: {why}" if _tuned else "glibc malloc, defaults (mallopt refused)"
        if _tuned and _initialised_backend() is not None:
            status += "; JAX had started, so its running threads keep their own arenas"
    elif _tuned:
        _tuned = not all(libc.mallopt(option, value) for option, value in _GLIBC_DEFAULTS.items())
        status = f"glibc malloc, default values restored: {why}" if not _tuned else "glibc malloc, restore refused"
    else:
        status = f"glibc malloc, defaults: {why}"
    if libc is not None and not wanted and huge_pages():
        status += f"; heap on transparent huge pages ({HUGETLB_TUNABLE} in GLIBC_TUNABLES)"
    elif libc is not None and (mode or os.environ.get("FNTRAIN_MALLOC", "").lower()) == "hugetlb":
        status += f"; but {HUGETLB_TUNABLE} was not in GLIBC_TUNABLES when the process started (fntrain train sets it)"
    return status


def huge_pages() -> bool:
    """Whether this process was started with glibc's heap on transparent huge pages."""
    return HUGETLB_TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")
