"""Gradient checking for research code: ``jax.grad`` against central differences in float64.

Use it when writing a new layer, loss or ``custom_vjp``: it names the parameter
whose gradient is wrong.

Example:
  >>> loss_fn = supervised_loss(net, losses.softmax_cross_entropy)
  >>> rows = gradcheck(loss_fn, params, model_state, (x, y))
  >>> print(format_table(rows))
  >>> assert passed(rows)
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fntrain.nn.summary import path_str

__all__ = ["GradCheckRow", "format_table", "gradcheck", "passed", "path_str"]


class GradCheckRow(NamedTuple):
    """The check of one parameter leaf.

    Attributes:
      path: the leaf's path in the params tree, keys joined by ``/`` (``"dense_0/w"``).
      shape: the leaf's shape.
      num_checked: how many of its elements were compared.
      grad_scale: ``max |g|`` over the whole leaf's analytic gradient.
      max_abs_error: ``max_i |g_i - fd_i|`` over the checked elements.
      max_rel_error: ``max_i |g_i - fd_i| / max(grad_scale, |fd_i|, 1e-8)``, see :func:`gradcheck`.
    """

    path: str
    shape: tuple[int, ...]
    num_checked: int
    grad_scale: float
    max_abs_error: float
    max_rel_error: float


def _to_f64(tree):
    # Cast on the host: eager jnp casts would compile one small program per leaf shape.
    def cast(a):
        return np.asarray(a, np.float64) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a

    return jax.tree.map(cast, tree)


def _check_indices(size: int, k: int) -> np.ndarray:
    # Evenly spaced flat indices, first and last included: deterministic and spread over the leaf.
    if size <= k:
        return np.arange(size)
    return np.unique(np.round(np.linspace(0, size - 1, k)).astype(np.int64))


def gradcheck(
    loss_fn,
    params,
    model_state,
    batch,
    *,
    eps: float = 1e-6,
    max_elements_per_param: int = 20,
    key: Optional[jax.Array] = None,
) -> list[GradCheckRow]:
    """Compares ``jax.grad`` of a ``loss_fn`` with central differences, per parameter leaf.

    Everything runs in float64 (inside ``jax.enable_x64(True)``): floating leaves of
    ``params``, ``model_state`` and ``batch`` are cast, integer leaves (labels, token
    ids) are kept. The loss is ``loss_fn(params, model_state, batch, key)[0]``, so with
    ``key=None`` the network runs in evaluation mode; pass a key to check training mode
    (dropout then uses the same mask for every evaluation, so the loss is a smooth
    function of the parameters).

    For each leaf, up to ``max_elements_per_param`` evenly spaced elements (all of them
    if the leaf is smaller) are checked against
    ``fd_i = (L(p + eps e_i) - L(p - eps e_i)) / (2 eps)``.

    The relative error is ``|g_i - fd_i| / max(grad_scale, |fd_i|, 1e-8)`` where
    ``grad_scale = max |g|`` over the whole leaf: the error as a fraction of the leaf's
    gradient size. An element-wise denominator ``max(|g_i|, |fd_i|)`` would flag correct
    code: rounding puts ``~1e-16 |L| / eps`` (``~1e-10`` here) of noise on every ``fd_i``,
    which is large relative to gradient entries that happen to be near zero. A wrong
    gradient (a missing factor, a wrong sign) errs by a fraction of the leaf's scale and
    shows up as a relative error near 1. Leaves whose whole gradient is below ~1e-8 are
    better judged by ``max_abs_error``.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, key) -> (loss, aux)``, see ``fntrain.step``.
      params: the parameter tree; only floating leaves are allowed.
      model_state: passed through unchanged (cast to float64).
      batch: passed through (floating leaves cast to float64).
      eps: the central-difference step. In float64, 1e-6 balances truncation
        (``~eps^2``) against rounding (``~1e-16 / eps``).
      max_elements_per_param: elements checked per leaf (finite differences cost two
        loss evaluations each).
      key: None for evaluation mode, or a PRNG key for training mode.

    Returns:
      One :class:`GradCheckRow` per parameter leaf, in tree-flatten order.

    Raises:
      TypeError: a parameter leaf is not floating point.
      ValueError: ``max_elements_per_param < 1`` or ``eps <= 0``.
    """
    if max_elements_per_param < 1:
        raise ValueError(f"gradcheck: max_elements_per_param must be >= 1, got {max_elements_per_param}")
    if not eps > 0:
        raise ValueError(f"gradcheck: eps must be > 0, got {eps}")
    leaves_with_path = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in leaves_with_path:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"gradcheck: parameter {path_str(path)!r} has dtype {jnp.result_type(leaf)}; gradients need "
                "floating-point parameters (move integer leaves into model_state or the batch)."
            )
    with jax.enable_x64(True):
        flat, loss_flat, sizes = _flat_loss(loss_fn, params, model_state, batch, key)
        flat_grad = np.asarray(jax.jit(jax.grad(loss_flat))(flat), np.float64)
        loss_flat = jax.jit(loss_flat)
        rows, offset = [], 0
        for (path, leaf), size in zip(leaves_with_path, sizes):
            leaf_slice = slice(offset, offset + size)
            idx = _check_indices(size, max_elements_per_param)
            rows.append(_check_leaf(path_str(path), tuple(np.shape(leaf)), loss_flat, flat, flat_grad, leaf_slice, idx, eps))
            offset += size
    return rows


def _flat_loss(loss_fn, params, model_state, batch, key):
    """``(flat float64 params, loss of a flat vector, leaf sizes)``: one flat vector, so a
    single compiled function serves every perturbation."""
    params, model_state, batch = _to_f64(params), _to_f64(model_state), _to_f64(batch)
    leaves, treedef = jax.tree.flatten(params)
    shapes = [np.shape(leaf) for leaf in leaves]
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    flat = np.concatenate([np.ravel(leaf) for leaf in leaves]) if leaves else np.zeros(0)
    bounds = np.cumsum([0, *sizes])

    def loss_flat(v):
        parts = [v[lo:hi].reshape(shape) for lo, hi, shape in zip(bounds[:-1], bounds[1:], shapes)]
        value = loss_fn(jax.tree.unflatten(treedef, parts), model_state, batch, key)[0]
        if jnp.shape(value) != ():
            raise ValueError(f"gradcheck: loss_fn must return a scalar loss, got shape {jnp.shape(value)}")
        return value

    return flat, loss_flat, sizes


def _check_leaf(path: str, shape, loss_flat, flat, flat_grad, leaf: slice, idx, eps: float) -> GradCheckRow:
    """Central differences at the leaf's elements ``idx`` against the analytic gradient."""
    g = flat_grad[leaf]
    grad_scale = float(np.max(np.abs(g))) if g.size else 0.0
    abs_err, rel_err = np.zeros(len(idx)), np.zeros(len(idx))
    for j, i in enumerate(leaf.start + idx):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += eps
        minus[i] -= eps
        fd = (float(loss_flat(plus)) - float(loss_flat(minus))) / (2 * eps)
        abs_err[j] = abs(flat_grad[i] - fd)
        rel_err[j] = abs_err[j] / max(grad_scale, abs(fd), 1e-8)
    return GradCheckRow(
        path=path,
        shape=shape,
        num_checked=len(idx),
        grad_scale=grad_scale,
        max_abs_error=float(abs_err.max()) if len(idx) else 0.0,
        max_rel_error=float(rel_err.max()) if len(idx) else 0.0,
    )


# Below this absolute error a row passes whatever its relative error: central differences
# in float64 with eps=1e-6 carry ~1e-9 of rounding noise, which is all a parameter whose
# true gradient is exactly zero (an attention key bias, say) ever shows.
NOISE_FLOOR = 1e-8


def row_ok(row: GradCheckRow, tol: float = 1e-6) -> bool:
    """Relative error at most ``tol``, or absolute error below the finite-difference noise."""
    return row.max_rel_error <= tol or row.max_abs_error <= NOISE_FLOOR


def passed(rows: Sequence[GradCheckRow], tol: float = 1e-6) -> bool:
    """True when every row is ``row_ok``.

    1e-6 suits float64 with ``eps=1e-6``: correct code gives ~1e-9, a wrong gradient ~1e-1.
    """
    return all(row_ok(r, tol) for r in rows)


def format_table(rows: Sequence[GradCheckRow], *, tol: float = 1e-6) -> str:
    """A fixed-width table of the rows, one per parameter, marking those over ``tol``.

    Example output::

      parameter   shape    checked  max |g|   max abs err  max rel err  status
      dense_1/b   (8,)           8  1.23e-01     2.05e-11     1.67e-10  ok
    """
    header = ("parameter", "shape", "checked", "max |g|", "max abs err", "max rel err", "status")
    body = [
        (
            r.path,
            str(r.shape),
            str(r.num_checked),
            f"{r.grad_scale:.2e}",
            f"{r.max_abs_error:.2e}",
            f"{r.max_rel_error:.2e}",
            "ok" if row_ok(r, tol) else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(line[c]) for line in (header, *body)) for c in range(len(header))]
    left = {0, 1, 6}  # text columns left-aligned, numbers right-aligned

    def fmt(line):
        return "  ".join(v.ljust(w) if c in left else v.rjust(w) for c, (v, w) in enumerate(zip(line, widths))).rstrip()

    return "\n".join(fmt(line) for line in (header, *body))
