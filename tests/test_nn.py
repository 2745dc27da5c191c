"""Layers: gradients against finite differences, references, shapes and semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_grads_match
from fntrain import nn

# (id, layer, input shape, train): every layer with trainable params or a nontrivial derivative.
GRAD_CASES = [
    ("dense", nn.dense(3), (2, 4), False),
    ("dense_no_bias", nn.dense(3, use_bias=False), (2, 4), False),
    ("conv2d_same", nn.conv2d(3, 3), (2, 5, 5, 2), False),
    ("conv2d_valid_stride2", nn.conv2d(2, (3, 2), strides=2, padding="VALID"), (1, 6, 5, 2), False),
    ("conv2d_same_stride2", nn.conv2d(2, 3, strides=(2, 1), padding="SAME"), (1, 5, 4, 1), False),
    ("max_pool", nn.max_pool(2), (1, 4, 4, 2), False),
    ("max_pool_same_stride1", nn.max_pool(3, strides=1, padding="SAME"), (1, 4, 4, 1), False),
    ("avg_pool", nn.avg_pool(2), (1, 4, 4, 2), False),
    ("avg_pool_same_stride2", nn.avg_pool(3, strides=2, padding="SAME"), (1, 5, 5, 2), False),
    ("global_avg_pool", nn.global_avg_pool(), (2, 3, 3, 2), False),
    ("flatten", nn.flatten, (2, 2, 3), False),
    ("layer_norm", nn.layer_norm(), (3, 5), False),
    ("batch_norm_train", nn.batch_norm(), (6, 3), True),
    ("batch_norm_eval", nn.batch_norm(), (6, 3), False),
    ("dropout_train", nn.dropout(0.5), (4, 5), True),
    ("relu", nn.relu, (3, 4), False),
    ("gelu", nn.gelu, (3, 4), False),
    ("tanh", nn.tanh, (3, 4), False),
    ("sigmoid", nn.sigmoid, (3, 4), False),
    ("softplus", nn.softplus, (3, 4), False),
    ("identity", nn.identity, (3, 4), False),
    ("residual", nn.residual(nn.dense(4), nn.tanh), (2, 4), False),
    ("mlp_layer_norm", nn.mlp((5,), 3, norm="layer"), (2, 4), False),
    ("cnn_batch_norm", nn.cnn((2,), 3, norm="batch", hidden_sizes=(4,)), (2, 4, 4, 1), True),
]


@pytest.mark.parametrize("name,layer,shape,train", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_layer_gradients_match_finite_differences(x64, name, layer, shape, train):
    x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    params, state = layer.init(jax.random.key(0), x)
    # Non-default statistics so the eval path of batch norm is really exercised.
    state = jax.tree.map(lambda s: s + 0.3, state)
    out, _ = layer.apply(params, state, x, train=train, key=jax.random.key(2))
    weights = jax.random.normal(jax.random.key(3), out.shape, jnp.float64)

    def loss(tree):
        y, _ = layer.apply(tree["params"], state, tree["x"], train=train, key=jax.random.key(2))
        return jnp.sum(y * weights)

    assert_grads_match(loss, {"params": params, "x": x})


def test_embedding_gradient_matches_finite_differences(x64):
    layer = nn.embedding(5, 3)
    ids = jnp.array([[0, 2, 2], [4, 1, 0]])
    params, state = layer.init(jax.random.key(0), ids)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    weights = jax.random.normal(jax.random.key(3), (2, 3, 3), jnp.float64)
    assert_grads_match(lambda p: jnp.sum(layer.apply(p, state, ids)[0] * weights), params)
    np.testing.assert_array_equal(layer.apply(params, state, ids)[0], np.asarray(params["table"])[np.asarray(ids)])


@pytest.mark.parametrize("name,layer,shape,train", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_init_and_apply_shapes_agree_with_eval_shape(name, layer, shape, train):
    x = jnp.ones(shape)
    params, state = layer.init(jax.random.key(0), x)
    abstract_params, abstract_state = jax.eval_shape(layer.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, x.dtype))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(lambda s: s.shape, abstract_params)
    assert jax.tree.map(jnp.shape, state) == jax.tree.map(lambda s: s.shape, abstract_state)
    # init also accepts a ShapeDtypeStruct directly.
    direct, _ = layer.init(jax.random.key(0), jax.ShapeDtypeStruct(shape, x.dtype))
    assert jax.tree.map(jnp.shape, direct) == jax.tree.map(jnp.shape, params)
    y, _ = layer.apply(params, state, x, train=train, key=jax.random.key(1))
    y_abstract = nn.output_shape(layer, params, state, jax.ShapeDtypeStruct(shape, x.dtype))
    assert y.shape == y_abstract.shape and y.dtype == y_abstract.dtype


# --------------------------------------------------------------------------- references


def _np_pad(x, kernel, stride, padding):
    """Pads [N, H, W, C] as XLA's SAME/VALID does; returns padded x and output size."""
    pads = []
    for size, k, s in zip(x.shape[1:3], kernel, stride):
        if padding == "VALID":
            pads.append((0, 0))
        else:
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
    return pads


def np_conv2d(x, w, stride, padding):
    pads = _np_pad(x, w.shape[:2], stride, padding)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    kh, kw = w.shape[:2]
    oh = (xp.shape[1] - kh) // stride[0] + 1
    ow = (xp.shape[2] - kw) // stride[1] + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride[0] : i * stride[0] + kh, j * stride[1] : j * stride[1] + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwcf->nf", patch, w)
    return out


def np_pool(x, window, stride, padding, op):
    pads = _np_pad(x, window, stride, padding)
    fill = -np.inf if op == "max" else np.nan
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    oh = (xp.shape[1] - window[0]) // stride[0] + 1
    ow = (xp.shape[2] - window[1]) // stride[1] + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride[0] : i * stride[0] + window[0], j * stride[1] : j * stride[1] + window[1], :]
            out[:, i, j, :] = patch.max(axis=(1, 2)) if op == "max" else np.nanmean(patch, axis=(1, 2))
    return out


@pytest.mark.parametrize(
    "kernel,stride,padding",
    [((3, 3), (1, 1), "SAME"), ((3, 3), (2, 2), "SAME"), ((2, 3), (2, 1), "VALID"), ((4, 4), (3, 3), "SAME")],
)
def test_conv2d_matches_numpy_reference(kernel, stride, padding):
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 7, 6, 3)))
    layer = nn.conv2d(4, kernel, strides=stride, padding=padding)
    params, state = layer.init(jax.random.key(1), x)
    y, _ = layer.apply(params, state, x)
    expected = np_conv2d(x, np.asarray(params["w"]), stride, padding) + np.asarray(params["b"])
    # float32 sums of <= 48 products: agreement to ~1e-5 relative.
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize(
    "window,stride,padding", [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), "SAME"), ((3, 2), (1, 1), "SAME")]
)
def test_pooling_matches_numpy_reference(op, window, stride, padding):
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 7, 6, 3)))
    layer = (nn.max_pool if op == "max" else nn.avg_pool)(window, strides=stride, padding=padding)
    y, _ = layer.apply({}, {}, x)
    np.testing.assert_allclose(y, np_pool(x, window, stride, padding, op), rtol=1e-6, atol=1e-6)


def test_batch_norm_matches_numpy_reference():
    momentum, eps = 0.8, 1e-5
    layer = nn.batch_norm(momentum=momentum, eps=eps)
    x = np.asarray(jax.random.normal(jax.random.key(0), (16, 3, 3, 4))) * 3.0 + 1.5
    params, state = layer.init(jax.random.key(1), x)
    params = {"scale": jnp.array([1.0, 2.0, 0.5, -1.0]), "offset": jnp.array([0.0, 1.0, -1.0, 0.5])}
    scale, offset = np.asarray(params["scale"]), np.asarray(params["offset"])

    y_train, new_state = layer.apply(params, state, x, train=True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y_train, (x - mean) / np.sqrt(var + eps) * scale + offset, rtol=1e-5, atol=1e-5)
    running_mean = momentum * 0.0 + (1 - momentum) * mean
    running_var = momentum * 1.0 + (1 - momentum) * var
    np.testing.assert_allclose(new_state["mean"], running_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_state["var"], running_var, rtol=1e-6, atol=1e-6)

    y_eval, eval_state = layer.apply(params, new_state, x, train=False)
    expected = (x - running_mean) / np.sqrt(running_var + eps) * scale + offset
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
    assert eval_state is new_state  # evaluation leaves the statistics alone


def test_dropout_rate_determinism_and_eval_identity():
    rate = 0.3
    layer = nn.dropout(rate)
    x = jnp.ones((200, 500))
    y, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(0))
    kept = np.asarray(y != 0)
    # 100k Bernoulli draws: the kept fraction's standard error is ~0.0015.
    assert abs(kept.mean() - (1 - rate)) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / (1 - rate), rtol=1e-6)
    y_again, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(0))
    np.testing.assert_array_equal(y, y_again)
    y_other, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(1))
    assert np.any(np.asarray(y_other) != np.asarray(y))
    y_eval, _ = layer.apply({}, {}, x, train=False, key=None)
    np.testing.assert_array_equal(y_eval, x)


def test_dropout_in_training_without_key_explains_the_fix():
    with pytest.raises(ValueError, match="needs a PRNG key"):
        nn.dropout(0.5).apply({}, {}, jnp.ones((2, 2)), train=True, key=None)


def test_serial_names_params_and_threads_state():
    net = nn.serial(nn.dense(4), nn.batch_norm(), nn.relu, nn.dense(2))
    x = jax.random.normal(jax.random.key(0), (8, 3))
    params, state = net.init(jax.random.key(1), x)
    assert sorted(params) == ["batch_norm_1", "dense_0", "dense_3"]
    assert sorted(state) == ["batch_norm_1"]
    _, new_state = net.apply(params, state, x, train=True, key=jax.random.key(2))
    assert not np.allclose(new_state["batch_norm_1"]["mean"], state["batch_norm_1"]["mean"])
    _, eval_state = net.apply(params, state, x, train=False, key=None)
    np.testing.assert_array_equal(eval_state["batch_norm_1"]["mean"], state["batch_norm_1"]["mean"])


def test_serial_output_matches_hand_composition():
    net = nn.serial(nn.dense(5), nn.tanh, nn.dense(2))
    x = jax.random.normal(jax.random.key(0), (3, 4))
    params, state = net.init(jax.random.key(1), x)
    p0, p2 = params["dense_0"], params["dense_2"]
    expected = np.tanh(np.asarray(x) @ p0["w"] + p0["b"]) @ p2["w"] + p2["b"]
    np.testing.assert_allclose(net.apply(params, state, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_residual_rejects_a_shape_changing_branch():
    with pytest.raises(ValueError, match="keep its input's shape"):
        nn.residual(nn.dense(3)).init(jax.random.key(0), jnp.ones((2, 4)))


def test_initializers_have_the_documented_scale():
    fan_in, fan_out = 400, 300
    shape = (fan_in, fan_out)
    stds = {
        "he_normal": np.sqrt(2 / fan_in),
        "lecun_normal": np.sqrt(1 / fan_in),
        "glorot_normal": np.sqrt(2 / (fan_in + fan_out)),
        "he_uniform": np.sqrt(2 / fan_in),
        "glorot_uniform": np.sqrt(2 / (fan_in + fan_out)),
    }
    for name, std in stds.items():
        w = np.asarray(nn.initializers.get(name)(jax.random.key(0), shape, jnp.float32))
        # 120k samples: the sample std is within ~1% of the truth.
        assert abs(w.std() / std - 1) < 0.03, name
    u = np.asarray(nn.initializers.uniform(0.5)(jax.random.key(0), shape))
    assert -0.5 <= u.min() < -0.49 and 0.49 < u.max() < 0.5
    assert not np.any(nn.initializers.get("zeros")(jax.random.key(0), shape))
    with pytest.raises(ValueError, match="unknown initializer"):
        nn.initializers.get("he")


@pytest.mark.parametrize("make,shape", [(nn.dense, (2, 1)), (lambda f, **kw: nn.conv2d(f, 1, **kw), (1, 2, 2, 1))])
def test_kernel_and_bias_come_from_different_keys(make, shape):
    # With one key for both, w[..., j] and b[j] were the same draws whenever b_init was random.
    init = nn.initializers.normal(1.0)
    params, _ = make(6, w_init=init, b_init=init).init(jax.random.key(0), jnp.ones(shape))
    w_key, b_key = jax.random.split(jax.random.key(0))
    np.testing.assert_array_equal(params["w"], init(w_key, params["w"].shape, jnp.float32))
    np.testing.assert_array_equal(params["b"], init(b_key, (6,), jnp.float32))
    assert not np.allclose(params["w"].ravel(), params["b"])


def test_mlp_with_w_init_is_the_hand_written_network_and_its_default_chooses_by_activation():
    x = jnp.ones((1, 784))
    hand = nn.serial(nn.flatten, nn.dense(512), nn.relu, nn.dense(10))
    ours, _ = nn.mlp([512], 10, w_init="lecun_normal").init(jax.random.key(0), x)
    theirs, _ = hand.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)

    def stds(activation):
        params, _ = nn.mlp([512], 10, activation=activation).init(jax.random.key(0), x)
        return float(params["dense_1"]["w"].std()), float(params["dense_3"]["w"].std())

    # 400k (hidden) and 5k (output) samples: sample stds within ~1% and ~3% of the truth.
    glorot_out = np.sqrt(2 / (512 + 10))
    for activation, hidden in (("relu", np.sqrt(2 / 784)), ("tanh", np.sqrt(2 / (784 + 512)))):
        got_hidden, got_out = stds(activation)
        assert abs(got_hidden / hidden - 1) < 0.03, activation
        assert abs(got_out / glorot_out - 1) < 0.06, activation


def test_cnn_w_init_reaches_the_convolutions_and_the_head():
    params, _ = nn.cnn([4], 3, hidden_sizes=(5,), w_init="zeros").init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
    assert all(not np.any(p["w"]) for p in params.values() if "w" in p)


def test_summary_counts_parameters_without_allocating():
    net = nn.mlp((32, 16), 10)
    table = nn.summary(net, jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
    assert f"{64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10:,}" in table.splitlines()[-1]
    assert "(1, 10)" in table


def test_summary_shows_a_group_per_layer_from_a_function_of_parameter_paths():
    net = nn.mlp((8,), 3)  # flatten_0 dense_1 relu_2 dense_3
    seen = []

    def group_of(path):
        seen.append(path)
        return {"dense_1/w": "frozen", "dense_1/b": "frozen", "dense_3/b": "slow"}.get(path, "")

    table = nn.summary(net, jax.ShapeDtypeStruct((1, 5), jnp.float32), group_of=group_of)
    lines = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert table.splitlines()[0].split() == ["layer", "output", "shape", "params", "group"]
    assert lines["dense_1"].endswith("frozen") and lines["dense_3"].endswith("slow: b; default: w")
    assert sorted(seen) == ["dense_1/b", "dense_1/w", "dense_3/b", "dense_3/w"]
    assert "group" not in nn.summary(net, jax.ShapeDtypeStruct((1, 5), jnp.float32))
