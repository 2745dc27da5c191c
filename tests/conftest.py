"""Shared test helpers: float64 finite differences, the independent reference for gradients."""

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree


@pytest.fixture
def x64():
    """Runs the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


def finite_difference_grad(f, tree, eps=1e-6):
    """Central differences of scalar ``f`` w.r.t. every element of ``tree`` (float64)."""
    flat, unravel = ravel_pytree(tree)
    flat = np.asarray(flat, np.float64)
    f_flat = jax.jit(lambda v: f(unravel(v)))
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = eps
        grad[i] = (float(f_flat(flat + step)) - float(f_flat(flat - step))) / (2 * eps)
    return unravel(grad)


def assert_grads_match(f, tree, *, rtol=1e-6, atol=1e-9):
    """``jax.grad(f)(tree)`` agrees with central differences element-wise.

    In float64 central differences with eps=1e-6 are accurate to ~1e-10 absolute,
    so relative 1e-6 is a real check (atol covers gradients that are exactly 0).
    """
    analytic = jax.grad(f)(tree)
    numeric = finite_difference_grad(f, tree)
    for (path, a), n in zip(jax.tree_util.tree_leaves_with_path(analytic), jax.tree.leaves(numeric)):
        np.testing.assert_allclose(np.asarray(a), n, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))
