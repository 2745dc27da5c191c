"""Which convolution kernel XLA:CPU runs for each shape: timed once, kept per machine.

The candidates compute the same numbers (up to float32 rounding):

- ``"im2col"``: :func:`fntrain.nn._cpu.conv2d_im2col`, one matmul of image patches with the
  kernel. On machines where XLA:CPU's convolution is slow (its kernel gradient a naive loop)
  it is several times faster, but it takes ``kh * kw`` times the input's memory.
- ``"xla"``: ``lax.conv_general_dilated``, XLA's own convolution.

Which is faster depends on the machine and on the shape, so the first time a computation with
a convolution of a given shape is traced for XLA:CPU, :func:`cpu_kernel` compiles the forward
and backward pass of each candidate for that shape, times them on random data (the best of a
few runs), and keeps the faster one in memory and in the cache of :mod:`fntrain.tuning`
(``conv_kernels.json``, per machine), so later processes on this machine read it. XLA's
kernel is chosen only where it is at least :data:`MARGIN` times faster, so a close call stays
with im2col; the cache keeps a machine's answer, so later runs there (resumed ones included)
compile the same program. Timing costs two compilations and a few runs per new shape (a
second or two for a small CNN).

``FNTRAIN_CONV=im2col`` or ``FNTRAIN_CONV=xla`` forces a kernel for every shape; unset or
``auto`` times. Nothing is timed (im2col is used) for a shape with symbolic dimensions
(``jax.export``'s batch dimension), where JAX's default backend is not the CPU
(there this branch is traced but not run) or in a run of several processes, which must all
compile the same program. :func:`choices` lists what this process chose; the training loop
writes it to ``summary.json`` under ``conv_kernels``.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fntrain import tuning
from fntrain.nn import _cpu

ENV = "FNTRAIN_CONV"
MODES = ("auto", "im2col", "xla")
DEFAULT = "im2col"
MARGIN = 1.2  # XLA's kernel must be this many times faster than im2col to be chosen
REPEATS = 3  # timed runs per candidate at least, after one that compiles...
MIN_TOTAL_SECONDS = 0.05  # ...and more, up to MAX_REPEATS, until they took this long
MAX_REPEATS = 100
LONG_RUN_SECONDS = 1.0  # a candidate whose first timed run takes longer is timed once
CACHE_KIND = "conv_kernels"


def xla_conv2d(x, w, strides: tuple[int, int], padding: str):
    """``lax.conv_general_dilated`` over NHWC/HWIO. Shapes as :func:`fntrain.nn._cpu.conv2d_im2col`."""
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


KERNELS: dict[str, Callable] = {"im2col": _cpu.conv2d_im2col, "xla": xla_conv2d}

_chosen: dict[str, dict] = {}  # shape key -> {"kernel", "source", "ms"}: this process's choices
_seen: list[str] = []  # shape keys in the order they were traced, for choices(since=mark())


def shape_key(x_shape, w_shape, x_dtype, w_dtype, strides, padding) -> str:
    """E.g. ``"x128x28x28x1 w3x3x1x32 float32/float32 s1x1 SAME"``."""
    dims = lambda shape: "x".join(str(int(d)) for d in shape)  # noqa: E731
    return f"x{dims(x_shape)} w{dims(w_shape)} {jnp.dtype(x_dtype).name}/{jnp.dtype(w_dtype).name} s{dims(strides)} {padding}"


def mark() -> int:
    """A point in this process's sequence of traced convolutions, for :func:`choices`."""
    return len(_seen)


def choices(since: int = 0) -> dict[str, dict]:
    """The kernel chosen for each convolution traced (for XLA:CPU) since ``since`` (a
    :func:`mark`): ``{shape_key: {"kernel": "im2col" | "xla", "source": "timed" | "cached" |
    "forced", "ms": {candidate: milliseconds of forward + backward} or None}}``."""
    return {key: dict(_chosen[key]) for key in dict.fromkeys(_seen[since:]) if key in _chosen}


def forced() -> str | None:
    """The kernel ``FNTRAIN_CONV`` forces, or None for auto (with a warning for an unknown value)."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        warnings.warn(f"{ENV}={mode!r} is not one of {MODES}; timing the candidates as for 'auto'.", stacklevel=3)
        return None
    return None if mode == "auto" else mode


def cpu_kernel(x, w, strides: tuple[int, int], padding: str) -> Callable:
    """The kernel to run on XLA:CPU for convolving ``x`` with ``w``, called as ``kernel(x, w,
    strides, padding)``; times the candidates the first time a shape is seen (see the module).

    Shapes: ``x: [N, H, W, C]``, ``w: [kh, kw, C, F]`` (arrays or tracers; only shapes and
    dtypes are read).
    """
    kernel = forced()
    if not all(isinstance(d, int) for d in (*x.shape, *w.shape)):  # symbolic (jax.export): nothing to time
        return KERNELS[kernel or DEFAULT]
    key = shape_key(x.shape, w.shape, x.dtype, w.dtype, strides, padding)
    if kernel is not None:
        _chosen[key] = {"kernel": kernel, "source": "forced", "ms": None}
    elif key not in _chosen or _chosen[key]["source"] == "forced":
        if not _can_time(x, w):
            return KERNELS[DEFAULT]
        _chosen[key] = _cached(key) or _timed(key, x, w, strides, padding)
    _seen.append(key)
    return KERNELS[_chosen[key]["kernel"]]


def _can_time(x, w) -> bool:
    floating = jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(w.dtype, jnp.floating)
    return floating and jax.default_backend() == "cpu" and jax.process_count() == 1


def _cached(key: str) -> dict | None:
    entry = tuning.lookup(CACHE_KIND, key)
    if not isinstance(entry, dict) or entry.get("kernel") not in KERNELS:
        return None
    return {"kernel": entry["kernel"], "source": "cached", "ms": entry.get("ms")}


def _timed(key: str, x, w, strides, padding) -> dict:
    ms = {name: 1e3 * _seconds(kernel, x, w, strides, padding) for name, kernel in KERNELS.items()}
    kernel = "xla" if ms["xla"] * MARGIN <= ms["im2col"] else "im2col"
    ms = {name: round(value, 3) for name, value in ms.items()}
    tuning.store(CACHE_KIND, key, {"kernel": kernel, "ms": ms})
    return {"kernel": kernel, "source": "timed", "ms": ms}


def _seconds(kernel: Callable, x, w, strides, padding) -> float:
    """Best wall time of one forward and backward pass (gradients of ``x`` and ``w``) of
    ``kernel`` on random arrays of ``x``'s and ``w``'s shapes, compiled beforehand."""
    with jax.ensure_compile_time_eval():  # run now, even while a computation is being traced
        out = jax.eval_shape(lambda a, b: kernel(a, b, strides, padding), x, w)
        rng = np.random.default_rng(0)
        x_, w_, g_ = (jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in (x, w, out))
        step = jax.jit(jax.grad(lambda a, b, g: jnp.sum(kernel(a, b, strides, padding) * g), argnums=(0, 1)))
        jax.block_until_ready(step(x_, w_, g_))
        best, total, runs = float("inf"), 0.0, 0
        # At least REPEATS runs, more (up to MAX_REPEATS) until MIN_TOTAL_SECONDS: a small
        # shape's sub-millisecond runs are mostly noise; one over LONG_RUN_SECONDS is enough.
        while runs == 0 or best <= LONG_RUN_SECONDS and (runs < REPEATS or (total < MIN_TOTAL_SECONDS and runs < MAX_REPEATS)):
            start = time.perf_counter()
            jax.block_until_ready(step(x_, w_, g_))
            seconds = time.perf_counter() - start
            best, total, runs = min(best, seconds), total + seconds, runs + 1
    return best
