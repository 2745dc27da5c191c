"""Matmuls whose gradients run fast on XLA:CPU.

The weight gradient of ``y = x @ w`` is ``x^T @ g``, contracted over every leading axis of
``x``. Autodiff of ``x @ w`` on ``x: [B, T, K]`` contracts two axes at once, which XLA:CPU
lowers to a transposed copy of ``x`` and a slow matmul; :func:`matmul` flattens ``x`` to
``[B * T, K]`` first. With the transposed copies in the attention's backward pass (below),
fntrain's W4 transformer train step went from ~135 to ~110 ms (2 cores, ``jax`` 0.10.2,
interleaved processes).

A contraction over the leading axis of both operands is also slow when the rows of ``x``
are a multiple of 128 floats long (strided reads that collide in the cache). For small
batches, a transposed copy of ``x`` written out first is faster, copy included (the W1 MLP
step, batch 128: 3.45 -> 3.33 ms); for larger ones (1024 or 4096 rows) the copy costs more
than it saves inside a train step, so :func:`matmul` copies only up to 256 rows. The batched
attention matmul ``"bqk,bqd->bkd"`` gains from the copy at W4's size too (4.2 -> 3.0 ms for
``[128, 128, 128] x [128, 128, 32]``), see :mod:`fntrain.nn._cpu`.

XLA folds a plain transpose back into the matmul, so :func:`transposed` hides it behind an
optimisation barrier. Other platforms transpose for free inside their matmuls and get the
plain, foldable transpose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero


def _swap(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


_COPY_MAX_ROWS = 256


def _copy_pays(rows: int, k: int) -> bool:
    """Whether the weight gradient of ``x [rows, k] @ w`` should read a transposed copy of ``x``."""
    return k % 128 == 0 and rows <= _COPY_MAX_ROWS


def transposed(x: jax.Array) -> jax.Array:
    """``swapaxes(x, -1, -2)``, written out to memory on CPU (see the module docstring)."""
    return lax.platform_dependent(x, cpu=lambda a: lax.optimization_barrier(_swap(a)), default=_swap)


@jax.custom_jvp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x: [..., K]``, ``w: [K, N]`` -> ``[..., N]``.

    The same numbers as ``x @ w``, forward and in every autodiff mode; only the weight
    gradient's matmul is arranged differently (see the module docstring): over ``x``
    flattened to 2-D, and for small batches over a transposed copy of ``x``.
    """
    return x @ w


def _matmul_jvp(primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = x @ w
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(dx @ w)
    if not isinstance(dw, SymbolicZero):
        x2 = x.reshape(-1, x.shape[-1])  # [M, K]
        if _copy_pays(*x2.shape):
            # Reverse mode transposes this term into x_t @ g: a matmul over x_t's minor axis.
            x2 = _swap(transposed(x2))
        terms.append((x2 @ dw).reshape(y.shape))
    return y, sum(terms[1:], terms[0])


matmul.defjvp(_matmul_jvp, symbolic_zeros=True)
