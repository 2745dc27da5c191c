"""conv2d's im2col convolution against XLA's own convolution, forward and both gradients; conv1d, pooling on sequences, reshape."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fntrain import nn
from fntrain.nn.layers import conv2d_nhwc

DN = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)


STRIDES = [(1, 1), (2, 2), (2, 1), (3, 3)]
PADDINGS = ["SAME", "VALID"]
KERNELS = [(1, 1), (3, 3), (5, 5), (3, 2)]
CHANNELS = [(1, 4), (3, 8), (5, 2)]  # (C, F)
GRID = list(itertools.product(STRIDES, PADDINGS, KERNELS, CHANNELS))


def output_and_gradients(conv, x, w, g, strides, padding):
    """``conv(x, w)`` and the vjp of ``g`` through it, in one jit (one compile, not one per op)."""

    @jax.jit
    def run(x, w, g):
        y, vjp = jax.vjp(lambda x, w: conv(x, w, strides, padding), x, w)
        return y, vjp(g)

    return run(x, w, g)


@pytest.mark.parametrize("strides,padding,kernel,channels", GRID)
def test_forward_and_gradients_match_lax_convolution(strides, padding, kernel, channels):
    c, f = channels
    rng = np.random.default_rng(0)  # NumPy: jax.random would compile anew for every shape here
    x = rng.standard_normal((2, 9, 7, c), np.float32)  # odd sizes: SAME pads unevenly, strides leave a remainder
    w = rng.standard_normal((*kernel, c, f), np.float32)
    g = rng.standard_normal(jax.eval_shape(lambda x, w: lax_conv(x, w, strides, padding), x, w).shape, np.float32)
    y_ref, grads_ref = output_and_gradients(lax_conv, x, w, g, strides, padding)
    y, grads = output_and_gradients(conv2d_nhwc, x, w, g, strides, padding)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    # N(0, 1) operands; each output is a float32 sum of <= 5*5*5 = 125 products and each kernel
    # gradient of <= 2*9*7 = 126, added in another order than XLA's: the rounding error is at most
    # ~126 * 6e-8 * |partial sums| (<= ~12) ~ 1e-4, typically far less.
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
    for ours, ref in zip(grads, grads_ref):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


def test_forward_mode_autodiff_matches_lax_convolution():
    """The im2col conv is plain jnp, so jax.jvp works (the former custom_vjp refused it)."""
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    tx, tw = jax.random.normal(jax.random.key(2), x.shape), jax.random.normal(jax.random.key(3), w.shape)
    _, ours = jax.jvp(lambda x, w: conv2d_nhwc(x, w, (2, 1), "SAME"), (x, w), (tx, tw))
    _, ref = jax.jvp(lambda x, w: lax_conv(x, w, (2, 1), "SAME"), (x, w), (tx, tw))
    # Two float32 sums of 27 products each in another order: ~1e-5.
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


def test_bfloat16_keeps_its_dtype_and_matches_float32_within_bfloat16_rounding():
    layer = nn.conv2d(8, 3)
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
    params, state = layer.init(jax.random.key(1), x.astype(jnp.bfloat16))
    assert params["w"].dtype == jnp.bfloat16
    y, _ = layer.apply(params, state, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    as32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    y32 = lax_conv(x.astype(jnp.bfloat16).astype(jnp.float32), as32["w"], (1, 1), "SAME") + as32["b"]
    # Same bfloat16 inputs; the products and the 36-term sum are rounded to bfloat16 (8 bits of
    # mantissa, relative step 2^-8 ~ 4e-3) at most a few times: a few 1e-2 on O(1) outputs.
    np.testing.assert_allclose(np.asarray(y, np.float32), y32, rtol=2e-2, atol=5e-2)


def test_fused_scan_of_conv_steps_matches_lax_convolution():
    """Inside lax.scan (how fused train steps run) the result is the same as XLA's convolution."""
    xs = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))

    def run(conv):
        def body(w, x):
            grad = jax.grad(lambda w: jnp.sum(jnp.tanh(conv(x, w, (1, 1), "SAME"))))(w)
            return w - 0.01 * grad, None

        return jax.jit(lambda w, xs: jax.lax.scan(body, w, xs)[0])(w, xs)

    # Three float32 SGD steps whose gradients are sums of <= 128 products: ~1e-5.
    np.testing.assert_allclose(run(conv2d_nhwc), run(lax_conv), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- conv1d


def lax_conv1d(x, w, stride, padding):
    return jax.lax.conv_general_dilated(x, w, (stride,), padding, dimension_numbers=("NWC", "WIO", "NWC"))


@pytest.mark.parametrize("stride,padding,k", list(itertools.product([1, 2, 3], PADDINGS, [1, 3, 4])))
def test_conv1d_matches_lax_1d_convolution_forward_and_gradients(stride, padding, k):
    rng = np.random.default_rng(0)
    layer = nn.conv1d(4, k, strides=stride, padding=padding)
    x = rng.standard_normal((2, 11, 3), np.float32)
    params, _ = layer.init(jax.random.key(0), x)
    assert params["w"].shape == (k, 3, 4)

    def ours(x, w):
        return layer.apply({"w": w, "b": params["b"]}, {}, x)[0]

    def ref(x, w):
        return lax_conv1d(x, w, stride, padding) + params["b"]

    y, y_ref = ours(x, params["w"]), ref(x, params["w"])
    assert y.shape == y_ref.shape
    g = rng.standard_normal(y.shape, np.float32)
    grads = jax.vjp(ours, x, params["w"])[1](g)
    grads_ref = jax.vjp(ref, x, params["w"])[1](g)
    # Sums of <= 3 * 4 and <= 2 * 11 float32 products in another order: 1e-5.
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv1d_takes_conv2ds_kernel_choice_by_platform():
    """conv1d lowers to the im2col matmul for CPU and to XLA's convolution for CUDA, as conv2d does."""
    from jax import export

    layer = nn.conv1d(4, 3)
    x = jnp.ones((2, 8, 3))
    params, _ = layer.init(jax.random.key(0), x)
    fn = jax.jit(lambda p, x: layer.apply(p, {}, x)[0])
    texts = {p: export.export(fn, platforms=[p])(params, x).mlir_module() for p in ("cpu", "cuda")}
    assert "stablehlo.convolution" not in texts["cpu"] and "stablehlo.convolution" in texts["cuda"]


def test_pools_and_global_pool_take_sequences():
    x = jnp.arange(2 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 3) % 5
    xn = np.asarray(x)
    np.testing.assert_array_equal(nn.max_pool(2).apply({}, {}, x)[0], np.maximum(xn[:, 0:6:2], xn[:, 1:7:2]))
    np.testing.assert_allclose(nn.avg_pool(2).apply({}, {}, x)[0], (xn[:, 0:6:2] + xn[:, 1:7:2]) / 2)
    same, _ = nn.avg_pool(2, padding="SAME").apply({}, {}, x)
    np.testing.assert_allclose(same[:, -1], xn[:, 6])  # the border window averages its one real step
    np.testing.assert_allclose(nn.global_avg_pool().apply({}, {}, x)[0], xn.mean(axis=1), rtol=1e-6)  # float32 mean
    with pytest.raises(ValueError, match=r"a \(2, 1\) window is for images"):
        nn.max_pool((2, 1)).apply({}, {}, x)
    # Rectangular windows on images.
    img = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    assert nn.max_pool((2, 1)).apply({}, {}, img)[0].shape == (2, 2, 4, 1)


def test_reshape_and_as_sequence():
    x = jnp.arange(24.0).reshape(2, 12)
    np.testing.assert_array_equal(nn.reshape(3, 4).apply({}, {}, x)[0], np.asarray(x).reshape(2, 3, 4))
    assert nn.reshape(-1, 2).apply({}, {}, x)[0].shape == (2, 6, 2)
    with pytest.raises(ValueError, match="reshape takes positive ints"):
        nn.reshape(-1, -1)
    seq, _ = nn.as_sequence.apply({}, {}, jnp.arange(6).reshape(2, 3))
    assert seq.shape == (2, 3, 1) and seq.dtype == jnp.float32
    assert nn.as_sequence.apply({}, {}, jnp.ones((2, 8, 8, 1)))[0].shape == (2, 8, 8)  # image rows as steps


def test_cnn_takes_rectangular_kernels_strides_and_pools():
    net = nn.cnn([4, 8], 3, kernel_size=(3, 1), strides=(1, 2), pool_size=(2, 1), hidden_sizes=[8])
    x = jnp.ones((2, 8, 8, 1))
    params, state = net.init(jax.random.key(0), x)
    assert params["conv2d_0"]["w"].shape == (3, 1, 1, 4)
    # Width: /2 by each stride (8 -> 4 -> 2); height: /2 by each pool (8 -> 4 -> 2).
    assert params["dense_7"]["w"].shape == (2 * 2 * 8, 8)
    assert net.apply(params, state, x)[0].shape == (2, 3)
    seq_net = nn.cnn1d([4], 2, kernel_size=3, pool_size=3, hidden_sizes=[])
    p, s = seq_net.init(jax.random.key(0), jnp.ones((2, 9)))
    assert p["dense_5"]["w"].shape == (3 * 4, 2) and seq_net.apply(p, s, jnp.ones((2, 9)))[0].shape == (2, 2)
