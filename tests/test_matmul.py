"""fntrain.nn.matmul: x @ w with a weight gradient that reads a transposed copy of x."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fntrain.nn.matmul import _copy_pays, matmul, transposed


# K = 128 and 256 on a few rows take the transposed copy of x for the weight gradient;
# K = 3 and 300 rows do not.
@pytest.mark.parametrize("x_shape", [(5, 3), (2, 4, 3), (3,), (5, 128), (2, 3, 256), (3, 100, 128)])
def test_value_and_gradients_equal_plain_matmul(x64, x_shape):
    rows = int(np.prod(x_shape[:-1]))
    assert _copy_pays(rows, x_shape[-1]) == (x_shape[-1] % 128 == 0 and rows <= 256)
    rng = np.random.default_rng(len(x_shape))
    x, w = jnp.asarray(rng.normal(size=x_shape)), jnp.asarray(rng.normal(size=(x_shape[-1], 4)))
    g = jnp.asarray(rng.normal(size=(*x_shape[:-1], 4)))
    y, vjp = jax.jit(lambda x, w: jax.vjp(matmul, x, w))(x, w)
    y_ref, vjp_ref = jax.vjp(jnp.matmul, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    for grad, grad_ref in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-12, atol=1e-12)
    # One operand differentiated at a time (the other's tangent is a symbolic zero).
    np.testing.assert_allclose(jax.grad(lambda w: jnp.sum(matmul(x, w) * g))(w), vjp_ref(g)[1], rtol=1e-12)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(matmul(x, w) * g))(x), vjp_ref(g)[0], rtol=1e-12)


def test_forward_mode_and_hessian_equal_plain_matmul(x64):
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.normal(size=(4, 128))), jnp.asarray(rng.normal(size=(128, 2)))  # the copying path
    tx, tw = jnp.asarray(rng.normal(size=x.shape)), jnp.asarray(rng.normal(size=w.shape))
    _, tangent = jax.jvp(matmul, (x, w), (tx, tw))
    np.testing.assert_allclose(tangent, tx @ w + x @ tw, rtol=1e-12)

    def loss(matmul_fn):
        return lambda w: jnp.sum(jnp.tanh(matmul_fn(x, w)) ** 2)

    np.testing.assert_allclose(jax.hessian(loss(matmul))(w), jax.hessian(loss(jnp.matmul))(w), rtol=1e-10)


def test_transposed_swaps_the_last_two_axes_and_is_differentiable():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(jax.jit(transposed)(x), np.swapaxes(np.asarray(x), -1, -2))
    g = jnp.arange(24.0).reshape(2, 4, 3)
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(transposed(x) * g))(x), np.swapaxes(g, -1, -2))
