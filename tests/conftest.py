"""Shared test helpers: float64 finite differences, the independent reference for gradients."""

import atexit
import os
import shutil
import tempfile

# The suite compiles the same programs on every machine: XLA:CPU's convolution kernel is pinned
# (tests/test_conv_choice.py unsets it to test the timed choice), and measured choices go to a
# cache of the test session's own, never the user's.
os.environ["FNTRAIN_CONV"] = "im2col"
os.environ["FNTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fntrain-test-cache-")
atexit.register(shutil.rmtree, os.environ["FNTRAIN_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402


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
