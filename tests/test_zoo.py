"""The model zoo: new layers, attention, blocks, ResNet and the transformer LM.

Gradients against float64 finite differences, NumPy references, causal and padding
masks, batch-norm state threading, parameter counts and a convergence check.

Speed: inits and applies are jitted, test data comes from NumPy, and keys use the
"rbg" PRNG. XLA:CPU takes about a second to compile threefry for each distinct
parameter shape, which would dominate these millisecond-sized networks; the layers
only split and consume keys, so they do not depend on the PRNG implementation.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fntrain as ft
from conftest import assert_grads_match
from fntrain import nn


def make_key(seed):
    return jax.random.key(seed, impl="rbg")


def init(net, x, seed=0):
    """``net.init`` compiled as a whole (``x`` may be an array or a ``ShapeDtypeStruct``)."""
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return jax.jit(lambda key: net.init(key, spec))(make_key(seed))


def random_init(net, x, seed=0):
    """Parameters and state of ``net.init``'s shapes filled with N(0, 1) draws (variances: |N(0, 1)|).

    For tests where the values do not matter; only tracing, no compile.
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(net.init, make_key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    params, state = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), abstract)
    return params, jax.tree.map(np.abs, state)


def apply(net, params, state, x, *, train=False, key=None, **kwargs):
    """``net.apply`` compiled as a whole; eager op-by-op dispatch would dominate tiny tests."""
    return jax.jit(lambda p, s, x, key: net.apply(p, s, x, train=train, key=key, **kwargs))(params, state, x, key)


# (id, layer, input shape, train): every new layer with params or a nontrivial derivative.
GRAD_CASES = [
    ("rms_norm", nn.rms_norm(), (3, 5), False),
    ("group_norm", nn.group_norm(2), (2, 3, 3, 4), False),
    ("depthwise_conv2d", nn.depthwise_conv2d(3), (1, 4, 4, 2), False),
    (
        "depthwise_conv2d_valid_stride2_mult2",
        nn.depthwise_conv2d((3, 2), strides=2, padding="VALID", channel_multiplier=2),
        (1, 5, 5, 2),
        False,
    ),
    ("attention", nn.multi_head_attention(2), (2, 3, 4), False),
    ("attention_head_dim_no_bias", nn.multi_head_attention(2, head_dim=3, use_bias=False), (1, 3, 4), False),
    ("sinusoidal_position", nn.sinusoidal_position_embedding(5), (2, 3, 5), False),
    ("learned_position", nn.learned_position_embedding(5), (2, 3, 4), False),
    ("transformer_block_bidirectional", nn.transformer_block(2, 6, causal=False), (1, 3, 4), False),
    ("transformer_block_dropout_train", nn.transformer_block(2, 6, dropout_rate=0.3), (2, 3, 4), True),
    ("basic_block_projection_train", nn.basic_block(2, strides=2), (2, 4, 4, 1), True),
    ("basic_block_projection_eval", nn.basic_block(2, strides=2), (1, 4, 4, 1), False),
    ("basic_block_identity_train", nn.basic_block(1), (2, 3, 3, 1), True),
]


@pytest.mark.parametrize("name,layer,shape,train", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_layer_gradients_match_finite_differences(x64, name, layer, shape, train):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape))
    params, state = init(layer, x)
    abstract = jax.eval_shape(layer.init, make_key(0), jax.ShapeDtypeStruct(shape, jnp.float64))
    assert jax.tree.map(jnp.shape, (params, state)) == jax.tree.map(lambda a: a.shape, abstract)
    # Non-default parameters and statistics, so scales, offsets and the eval path of batch norm matter.
    params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape), params)
    state = jax.tree.map(lambda s: s + 0.3, state)
    weights = rng.normal(size=nn.output_shape(layer, params, state, x).shape)

    @jax.jit
    def loss(tree):
        y, _ = layer.apply(tree["params"], state, tree["x"], train=train, key=make_key(2))
        return jnp.sum(y * weights)

    # |loss| reaches ~5, and central differences with eps=1e-6 carry ~|loss| * 1e-16 / 1e-6
    # of float64 rounding, ~1e-9; atol=1e-8 leaves room for that, rtol=1e-6 is conftest's.
    assert_grads_match(loss, {"params": params, "x": x}, atol=1e-8)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_padding_mask_gradients_match_finite_differences(x64, causal):
    layer = nn.multi_head_attention(2, causal=causal)
    rng = np.random.default_rng(0)
    x, weights = jnp.asarray(rng.normal(size=(2, 4, 4))), rng.normal(size=(2, 4, 4))
    mask = jnp.array([[True, True, False, True], [True, True, True, False]])
    params, state = init(layer, x)

    @jax.jit
    def loss(tree):
        return jnp.sum(layer.apply(tree["params"], state, tree["x"], mask=mask)[0] * weights)

    assert_grads_match(loss, {"params": params, "x": x}, atol=1e-8)  # rounding as above


# The bigger networks, built and initialised once for all the tests that use them.
ZOO = {
    "transformer_lm": (lambda: nn.transformer_lm(7, 6, 8, 2, 2, 16), (2, 6), jnp.int32),
    "transformer_lm_sinusoidal": (
        lambda: nn.transformer_lm(7, 6, 8, 1, 2, 16, position="sinusoidal"),
        (2, 6),
        jnp.int32,
    ),
    "resnet": (lambda: nn.resnet((1, 1), 4, 3), (2, 8, 8, 3), jnp.float32),
}


@functools.lru_cache(maxsize=None)
def zoo(name):
    """``(net, params, state)`` for ``ZOO[name]``; params from an init on a ``ShapeDtypeStruct``."""
    build, shape, dtype = ZOO[name]
    net = build()
    return (net, *init(net, jax.ShapeDtypeStruct(shape, dtype)))


SHAPE_CASES = [(name, shape, jnp.float32, train) for name, _, shape, train in GRAD_CASES] + [
    ("transformer_lm", (2, 5), jnp.int32, False),  # no dropout: train=True is the same program
    ("transformer_lm_sinusoidal", (2, 6), jnp.int32, False),
    ("resnet", (2, 8, 8, 3), jnp.float32, True),
    ("resnet", (2, 32, 32, 3), jnp.float32, True),
]
LAYERS = {name: layer for name, layer, _, _ in GRAD_CASES}


@pytest.mark.parametrize("name,shape,dtype,train", SHAPE_CASES, ids=[f"{c[0]}-{c[1]}" for c in SHAPE_CASES])
def test_init_and_apply_shapes_agree_with_eval_shape(name, shape, dtype, train):
    spec = jax.ShapeDtypeStruct(shape, dtype)
    if name in ZOO:
        layer, params, state = zoo(name)  # initialised (compiled) on a ShapeDtypeStruct
        abstract = jax.eval_shape(layer.init, make_key(0), spec)
        assert jax.tree.map(jnp.shape, (params, state)) == jax.tree.map(lambda a: a.shape, abstract)
    else:
        # The gradient test runs init on real arrays; here init sees only a ShapeDtypeStruct.
        layer = LAYERS[name]
        params, state = random_init(layer, spec)
    x = jnp.ones(shape, dtype)
    y_abstract = nn.output_shape(layer, params, state, spec)
    for mode in {False, train}:
        y, new_state = apply(layer, params, state, x, train=mode, key=make_key(1))
        assert y.shape == y_abstract.shape and y.dtype == y_abstract.dtype
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)


def test_parameter_dtype_follows_float64_input(x64):
    cases = [
        (nn.rms_norm(), (2, 3)),
        (nn.group_norm(1), (1, 2, 2, 2)),
        (nn.depthwise_conv2d(), (1, 3, 3, 2)),
        (nn.multi_head_attention(1), (1, 2, 3)),
        (nn.learned_position_embedding(4), (1, 2, 3)),
        (nn.transformer_block(1, 2), (1, 2, 3)),
        (nn.basic_block(2, strides=2), (1, 4, 4, 1)),
    ]
    for layer, shape in cases:
        params, state = jax.eval_shape(layer.init, make_key(0), jax.ShapeDtypeStruct(shape, jnp.float64))
        assert {p.dtype for p in jax.tree.leaves((params, state))} == {jnp.dtype(jnp.float64)}, layer.name


# --------------------------------------------------------------------------- NumPy references


def test_rms_norm_matches_numpy_reference():
    x = np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32) * 2.0 + 0.5
    scale = np.linspace(-1.0, 2.0, 6).astype(np.float32)
    y, _ = apply(nn.rms_norm(eps=1e-6), {"scale": scale}, {}, x)
    expected = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True) + 1e-6) * scale
    # float32 mean of 6 squares and one rsqrt: ~1e-6 relative.
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_groups", [1, 2, 6])
def test_group_norm_matches_numpy_reference(num_groups):
    eps = 1e-5
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 6)) * 3.0 + 1.0
    params = {"scale": np.arange(1.0, 7.0, dtype=np.float32), "offset": np.arange(6, dtype=np.float32) - 2.5}
    y, _ = apply(nn.group_norm(num_groups, eps=eps), params, {}, x.astype(np.float32))
    expected = np.empty_like(x)
    size = 6 // num_groups
    for n in range(2):
        for g in range(num_groups):
            block = x[n, :, :, g * size : (g + 1) * size]
            expected[n, :, :, g * size : (g + 1) * size] = (block - block.mean()) / np.sqrt(block.var() + eps)
    expected = expected * params["scale"] + params["offset"]
    # float32 statistics over <= 72 elements, outputs up to ~20 in magnitude: ~1e-5 relative.
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


def _same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def np_depthwise_conv2d(x, w, stride, padding, multiplier):
    """Direct loops: output channel c * multiplier + m filters input channel c with w[:, :, 0, c * multiplier + m]."""
    kh, kw = w.shape[:2]
    if padding == "VALID":
        pads = [(0, 0), (0, 0)]
    else:
        pads = [_same_pads(x.shape[1], kh, stride[0]), _same_pads(x.shape[2], kw, stride[1])]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    oh, ow = (xp.shape[1] - kh) // stride[0] + 1, (xp.shape[2] - kw) // stride[1] + 1
    n, c = x.shape[0], x.shape[3]
    out = np.zeros((n, oh, ow, c * multiplier))
    for b in range(n):
        for ch in range(c):
            for m in range(multiplier):
                o = ch * multiplier + m
                for i in range(oh):
                    for j in range(ow):
                        patch = xp[b, i * stride[0] : i * stride[0] + kh, j * stride[1] : j * stride[1] + kw, ch]
                        out[b, i, j, o] = np.sum(patch * w[:, :, 0, o])
    return out


@pytest.mark.parametrize(
    "kernel,stride,padding,multiplier",
    [((3, 3), (1, 1), "SAME", 1), ((3, 3), (2, 2), "SAME", 2), ((2, 3), (2, 1), "VALID", 3)],
)
def test_depthwise_conv2d_matches_numpy_loop(kernel, stride, padding, multiplier):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    layer = nn.depthwise_conv2d(kernel, strides=stride, padding=padding, channel_multiplier=multiplier)
    params, state = random_init(layer, x)
    assert params["w"].shape == (*kernel, 1, 3 * multiplier) and params["b"].shape == (3 * multiplier,)
    y, _ = apply(layer, params, state, x)
    expected = np_depthwise_conv2d(x, params["w"], stride, padding, multiplier) + params["b"]
    # float32 sums of <= 9 products: ~1e-6 relative.
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def np_attention(q, k, v, mask):
    """q, k, v: [B, T, H, Dh]; mask: [B, H, Tq, Tk] bool. Per head softmax(q k^T / sqrt(Dh)) v."""
    b, tq, h, d = q.shape
    out = np.zeros((b, tq, h, v.shape[-1]))
    for bi in range(b):
        for hi in range(h):
            s = q[bi, :, hi] @ k[bi, :, hi].T / math.sqrt(d)
            s = np.where(mask[bi, hi], s, -np.inf)
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            out[bi, :, hi] = (p / p.sum(axis=-1, keepdims=True)) @ v[bi, :, hi]
    return out


def np_multi_head_attention(params, x, num_heads, mask):
    p = {name: {k: np.asarray(a, np.float64) for k, a in sub.items()} for name, sub in params.items()}
    b, t, _ = x.shape

    def heads(name):
        return (x @ p[name]["w"] + p[name]["b"]).reshape(b, t, num_heads, -1)

    y = np_attention(heads("q"), heads("k"), heads("v"), mask)
    return y.reshape(b, t, -1) @ p["o"]["w"] + p["o"]["b"]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_multi_head_attention_matches_numpy_reference(causal, padded):
    b, t, d, h = 2, 5, 6, 3
    x = np.random.default_rng(0).normal(size=(b, t, d)).astype(np.float32)
    layer = nn.multi_head_attention(h, causal=causal)
    params, state = random_init(layer, x)
    params = jax.tree.map(lambda a: a / np.sqrt(d), params)  # keep the logits O(1)
    pad = np.array([[True] * 5, [True, True, True, False, False]]) if padded else np.ones((b, t), bool)
    mask = np.broadcast_to(pad[:, None, None, :], (b, h, t, t))
    if causal:
        mask = mask & np.tril(np.ones((t, t), bool))
    y, _ = apply(layer, params, state, x, mask=jnp.asarray(pad) if padded else None)
    # float32 projections and softmax over 5 keys: ~1e-6 relative.
    np.testing.assert_allclose(y, np_multi_head_attention(params, x, h, mask), rtol=1e-5, atol=1e-5)


def test_attention_softmax_and_its_gradient_match_jax_nn_softmax():
    # The attention softmax has a hand-written backward pass; it must be jax.nn.softmax's VJP.
    from fntrain.nn._cpu import _softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 6)).astype(np.float32) * 3
    logits[0, 0, 1, 2:] = np.finfo(np.float32).min  # masked keys, as dot_product_attention masks them
    logits[1, 2, 3, :] = np.finfo(np.float32).min  # a row with every key masked averages all
    g = rng.normal(size=logits.shape).astype(np.float32)
    y, vjp = jax.vjp(_softmax, logits)
    y_ref, vjp_ref = jax.vjp(lambda s: jax.nn.softmax(s, axis=-1), logits)
    # Same float32 operations forward; the backward pass regroups one sum: ~1e-7 absolute.
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-5, atol=1e-6)
    assert float(y[0, 0, 1, 2:].max()) == 0.0
    np.testing.assert_allclose(y[1, 2, 3], np.full(6, 1 / 6), rtol=1e-6)


def test_attention_matmuls_and_their_gradients_match_plain_einsum():
    # _scores and _mix have hand-written backward passes (a transposed operand on CPU);
    # they must be the plain einsums' VJPs, with Tq != Tk so a swapped axis cannot hide.
    from fntrain.nn._cpu import _mix, _scores

    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 6, 5))
    weights, v = rng.normal(size=(2, 3, 4, 6)), rng.normal(size=(2, 3, 6, 7))
    cases = [
        (_scores, lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k), (q, k), (2, 3, 4, 6)),
        (_mix, lambda w, v: jnp.einsum("bhqk,bhkd->bhqd", w, v), (weights, v), (2, 3, 4, 7)),
    ]
    for fn, reference, args, out_shape in cases:
        args = tuple(jnp.asarray(a, jnp.float32) for a in args)
        g = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
        y, vjp = jax.jit(lambda *a: jax.vjp(fn, *a))(*args)
        y_ref, vjp_ref = jax.vjp(reference, *args)
        # The same float32 products, summed in possibly another order: ~1e-6 relative.
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        for grad, grad_ref in zip(vjp(g), vjp_ref(g)):
            assert grad.shape == grad_ref.shape
            np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [2, 7, 8])
def test_causal_attention_in_two_blocks_equals_the_full_masked_square(t):
    # multi_head_attention(causal=True) without padding attends the first half of the queries
    # over the first half of the keys only; values and gradients must match the full square.
    from fntrain.nn._cpu import causal_attention

    rng = np.random.default_rng(t)
    q, k, v = (jnp.asarray(rng.normal(size=(2, t, 3, 4)), jnp.float32) for _ in range(3))
    g = jnp.asarray(rng.normal(size=(2, t, 3, 4)), jnp.float32)
    full = functools.partial(nn.dot_product_attention, mask=jnp.tril(jnp.ones((t, t), bool)))
    y, vjp = jax.vjp(causal_attention, q, k, v)
    y_ref, vjp_ref = jax.vjp(full, q, k, v)
    # The same float32 operations on fewer (exactly-zero-weight) terms: ~1e-7 absolute.
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for grad, grad_ref in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_dot_product_attention_matches_numpy_with_a_broadcast_mask():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
    k, v = rng.normal(size=(2, 5, 2, 4)).astype(np.float32), rng.normal(size=(2, 5, 2, 3)).astype(np.float32)
    mask = rng.random((2, 1, 3, 5)) < 0.6
    mask[..., 0] = True  # every query sees at least one key
    attend = jax.jit(nn.dot_product_attention)
    y = attend(q, k, v, mask=mask)
    assert y.shape == (2, 3, 2, 3) and y.dtype == jnp.float32
    expected = np_attention(q, k, v, np.broadcast_to(mask, (2, 2, 3, 5)))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # A low-precision input is attended in float32 and returned in its own dtype.
    y16 = attend(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), mask=mask)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), expected, atol=0.05)  # bf16 inputs: ~3 significant digits


def test_position_embeddings_add_the_documented_table():
    x = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32)
    y, _ = apply(nn.sinusoidal_position_embedding(8), {}, {}, x)
    t, i = np.arange(4)[:, None], np.arange(3)[None, :]
    angles = t / 10000.0 ** (2 * i / 5)
    pe = np.zeros((4, 6))
    pe[:, 0::2], pe[:, 1::2] = np.sin(angles), np.cos(angles)
    np.testing.assert_allclose(y, x + pe[:, :5], rtol=1e-6, atol=1e-6)

    layer = nn.learned_position_embedding(6)
    params, _ = random_init(layer, x)
    assert params["table"].shape == (6, 5)
    y, _ = apply(layer, params, {}, x)
    np.testing.assert_allclose(y, x + np.asarray(params["table"])[:4], rtol=1e-6)


# --------------------------------------------------------------------------- masks


def _changed_after(x, t, rng):
    """A copy of x [B, T, ...] whose positions > t all differ (ids: shifted mod 7; floats: new noise)."""
    x = np.array(x)
    if np.issubdtype(x.dtype, np.integer):
        x[:, t + 1 :] = (x[:, t + 1 :] + 1) % 7
    else:
        x[:, t + 1 :] = rng.normal(size=x[:, t + 1 :].shape)
    return x


CAUSAL_CASES = [
    ("attention", lambda: nn.multi_head_attention(2, causal=True), (2, 5, 4)),
    ("transformer_block", lambda: nn.transformer_block(2, 8), (2, 5, 4)),
    ("transformer_lm", None, (2, 6)),
    ("transformer_lm_sinusoidal", None, (2, 6)),
]


@pytest.mark.parametrize("name,build,shape", CAUSAL_CASES, ids=[c[0] for c in CAUSAL_CASES])
def test_causal_outputs_do_not_see_the_future(name, build, shape):
    rng = np.random.default_rng(0)
    if build is None:
        net, params, state = zoo(name)
        x = rng.integers(0, 7, shape).astype(np.int32)
    else:
        net = build()
        x = rng.normal(size=shape).astype(np.float32)
        params, state = random_init(net, x)
    run = jax.jit(lambda x: net.apply(params, state, x)[0])
    y = np.asarray(run(x))
    for t in range(shape[1] - 1):
        y_changed = np.asarray(run(_changed_after(x, t, rng)))
        # Masked keys get weight exactly 0, so the past is bit-for-bit unchanged.
        np.testing.assert_array_equal(y_changed[:, : t + 1], y[:, : t + 1], err_msg=f"leak into t<={t}")
        assert np.all(np.any(y_changed[:, t + 1] != y[:, t + 1], axis=-1)), f"position {t + 1} ignores its input"


def test_bidirectional_attention_does_see_the_future():
    # The causal test above would also pass for a layer that ignores other positions; this one would not.
    net = nn.multi_head_attention(2, causal=False)
    x = np.random.default_rng(0).normal(size=(1, 4, 4)).astype(np.float32)
    params, state = random_init(net, x)
    run = jax.jit(lambda x: net.apply(params, state, x)[0])
    assert np.all(np.asarray(run(x + np.array([0, 0, 0, 1.0])[:, None]))[:, 0] != np.asarray(run(x))[:, 0])


@pytest.mark.parametrize(
    "build",
    [
        lambda: nn.multi_head_attention(2),
        lambda: nn.multi_head_attention(2, causal=True),
        lambda: nn.transformer_block(2, 8),
    ],
    ids=["attention", "attention_causal", "transformer_block"],
)
def test_key_padding_mask_hides_the_padded_positions(build):
    net = build()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    mask = np.array([[True, False, True, True, False], [True, True, True, False, False]])
    garbage = np.where(mask[..., None], x, 100.0 * rng.normal(size=x.shape)).astype(np.float32)
    params, state = random_init(net, x)
    run = jax.jit(lambda x, mask: net.apply(params, state, x, mask=mask)[0])
    np.testing.assert_array_equal(np.asarray(run(garbage, mask))[mask], np.asarray(run(x, mask))[mask])
    # Without the mask the padded values do leak in (so the assertion above is not vacuous).
    everything = np.ones_like(mask)
    assert not np.allclose(np.asarray(run(garbage, everything))[mask], np.asarray(run(x, everything))[mask])


def test_trailing_padding_equals_the_unpadded_sequence():
    net = nn.multi_head_attention(2)
    x = np.random.default_rng(0).normal(size=(1, 5, 4)).astype(np.float32)
    params, state = random_init(net, x)
    y_padded, _ = apply(net, params, state, x, mask=jnp.array([[True, True, True, False, False]]))
    y_short, _ = apply(net, params, state, x[:, :3])
    # Same maths with a different number of (zero-weight) terms: float32 rounding only.
    np.testing.assert_allclose(y_padded[:, :3], y_short, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- ResNet


def test_resnet_output_shape_for_small_and_cifar_images():
    # The concrete outputs at both sizes are checked against these in the shape-agreement test.
    net, params, state = zoo("resnet")  # resnet((1, 1), 4, 3); conv weights do not depend on H, W
    for hw in (8, 32):
        assert nn.output_shape(net, params, state, jax.ShapeDtypeStruct((5, hw, hw, 3), jnp.float32)).shape == (5, 3)
    deeper = nn.resnet((1, 1, 1), 4, 7)
    spec = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)
    p, s = jax.eval_shape(deeper.init, make_key(0), spec)
    assert nn.output_shape(deeper, p, s, spec).shape == (2, 7)


def test_resnet_parameter_count_and_keys_match_a_hand_count():
    net = nn.resnet((1, 1), num_filters=4, num_outputs=3)
    params, state = jax.eval_shape(net.init, make_key(0), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
    stem = 3 * 3 * 3 * 4 + 2 * 4  # conv without bias + bn scale/offset
    stage_0 = (3 * 3 * 4 * 4 + 2 * 4) * 2  # two conv+bn, identity shortcut
    stage_1 = (3 * 3 * 4 * 8 + 2 * 8) + (3 * 3 * 8 * 8 + 2 * 8) + (1 * 1 * 4 * 8 + 2 * 8)  # + projection
    head = 8 * 3 + 3
    assert nn.count_params(params) == stem + stage_0 + stage_1 + head == 1391

    def paths(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in leaves}

    assert {"stem_conv/w", "stage_0_block_0/conv_1/w", "stage_1_block_0/proj_conv/w", "head/b"} <= paths(params)
    assert "stage_0_block_0/proj_conv/w" not in paths(params)  # shape kept: identity shortcut
    assert len(paths(state)) == 2 * 6 and "stage_1_block_0/proj_bn/var" in paths(state)  # 6 batch norms


def test_resnet_batch_norm_statistics_update_in_training_only():
    net, params, state = zoo("resnet")
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32) * 2.0 + 1.0
    _, train_state = apply(net, params, state, x, train=True, key=make_key(2))
    assert jax.tree.structure(train_state) == jax.tree.structure(state)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(train_state)):
        assert not np.allclose(old, new)  # every batch norm, shortcut included, saw the batch
    _, eval_state = apply(net, params, train_state, x, train=False)
    for old, new in zip(jax.tree.leaves(train_state), jax.tree.leaves(eval_state)):
        np.testing.assert_array_equal(old, new)


def test_resnet_eval_uses_the_running_statistics(x64):
    """With every running statistic set to the batch's own statistics, eval reproduces the train output."""
    momentum = 0.9  # batch_norm's default
    net, params, state = zoo("resnet")
    params, state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, state))
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 3)) * 2.0 + 1.0
    y_train, train_state = apply(net, params, state, x, train=True)
    # Invert mean <- m * 0 + (1 - m) * batch_mean and var <- m * 1 + (1 - m) * batch_var.
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda p, s: s / (1 - momentum) if p[-1].key == "mean" else (s - momentum) / (1 - momentum), train_state
    )
    y_eval, _ = apply(net, params, batch_stats, x, train=False)
    # float64 throughout; the inversion loses at most a factor 10: agreement to ~1e-12.
    np.testing.assert_allclose(y_eval, y_train, rtol=1e-9, atol=1e-9)
    y_eval_init, _ = apply(net, params, state, x, train=False)
    assert not np.allclose(y_eval_init, y_train, atol=1e-3)  # the statistics really matter


# --------------------------------------------------------------------------- transformer LM


def test_transformer_lm_output_shape_and_parameter_names():
    net, params, state = zoo("transformer_lm")  # vocab 7, seq_len 6, d_model 8, 2 layers, 2 heads
    assert sorted(params) == ["block_0", "block_1", "embed", "head", "norm", "pos"]
    assert params["pos"]["table"].shape == (6, 8) and params["head"]["w"].shape == (8, 7)
    assert sorted(params["block_0"]) == ["attn", "attn_norm", "mlp_in", "mlp_norm", "mlp_out"]
    assert sorted(params["block_0"]["attn"]) == ["k", "o", "q", "v"]
    for t in (6, 3):
        spec = jax.ShapeDtypeStruct((4, t), jnp.int32)
        assert nn.output_shape(net, params, state, spec) == jax.ShapeDtypeStruct((4, t, 7), jnp.float32)
    _, sinusoidal_params, _ = zoo("transformer_lm_sinusoidal")
    assert "pos" not in sinusoidal_params


def test_transformer_lm_learns_a_repeating_sequence():
    # "abac" repeated: after "a" comes "b" or "c" depending on the token before it, so the
    # model must attend to the past; a bigram model cannot go below 0.5 * ln 2 ~ 0.35.
    ids = np.array([{"a": 0, "b": 1, "c": 2}[c] for c in "abac" * 7], np.int32)
    seq_len, batch = 16, 8
    x = np.stack([ids[i : i + seq_len] for i in range(batch)])  # [8, 16] int
    y = np.stack([ids[i + 1 : i + seq_len + 1] for i in range(batch)])  # next tokens
    net = nn.transformer_lm(3, seq_len, d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
    params, state = init(net, x)
    opt = optax.adam(3e-3)
    ts = ft.TrainState.create(params, state, opt, key=make_key(1))
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy), opt)
    losses = []
    for _ in range(100):
        ts, metrics = step(ts, (x, y))
        losses.append(float(metrics["loss"]))
    # Irreducible: a window starting at "a" cannot know its second token: 4/128 * ln 2 ~ 0.022.
    assert losses[0] > 0.5 and losses[-1] < 0.1, losses[::10]
    assert float(metrics["accuracy"]) >= 0.95  # accuracy handles [B, T, V] logits and [B, T] labels


# --------------------------------------------------------------------------- errors


def test_misuse_gets_a_message_that_says_how_to_fix_it():
    def init_on(layer, shape):
        return jax.eval_shape(layer.init, make_key(0), jax.ShapeDtypeStruct(shape, jnp.float32))

    with pytest.raises(ValueError, match="choose num_groups dividing 6"):
        init_on(nn.group_norm(4), (1, 2, 2, 6))
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        init_on(nn.multi_head_attention(3), (1, 2, 4))
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        init_on(nn.learned_position_embedding(4), (1, 5, 2))
    with pytest.raises(ValueError, match=r"sequences \[batch, time, features\]"):
        init_on(nn.multi_head_attention(1), (2, 4))
    q = jnp.ones((1, 2, 1, 2))
    with pytest.raises(TypeError, match="mask must be bool"):
        nn.dot_product_attention(q, q, q, mask=jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="does not broadcast"):
        nn.dot_product_attention(q, q, q, mask=jnp.ones((3, 2), bool))
    layer = nn.multi_head_attention(1)
    params, state = init_on(layer, (1, 3, 2))
    with pytest.raises(ValueError, match=r"key padding mask \[batch, time\]"):
        nn.output_shape(layer, params, state, jnp.ones((1, 3, 2)))  # fine without a mask
        layer.apply(params, state, jnp.ones((1, 3, 2)), mask=jnp.ones((3,), bool))
    block = nn.transformer_block(1, 4, dropout_rate=0.1)
    params, state = init_on(block, (1, 2, 2))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jax.eval_shape(lambda p, x: block.apply(p, state, x, train=True, key=None), params, jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="'basic'"):
        nn.resnet(block="bottleneck")
