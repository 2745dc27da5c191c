"""Tests for fntrain.gradcheck and fntrain.layer_grads: checking and exposing backprop."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fntrain import losses, nn
from fntrain.gradcheck import GradCheckRow, format_table, gradcheck, passed
from fntrain.layer_grads import LayerGrad, layer_gradients, layer_stats, param_grads
from fntrain.nn.core import Module
from fntrain.step import supervised_loss

CE = losses.softmax_cross_entropy

# Eager, every operation compiles on its own; one compiled program keeps the tests fast.
_LAYER_GRADS = jax.jit(layer_gradients, static_argnums=(0, 5), static_argnames="train")


def LAYER_GRADS(*args, **kwargs):
    """layer_gradients, jitted, with numpy arrays back (so the checks below run in numpy)."""
    return jax.device_get(_LAYER_GRADS(*args, **kwargs))


def _data(shape, num_classes=3, dtype=np.float32):
    # numpy data and jitted init: eager jax would compile each small operation on its own
    x = np.random.default_rng(1).normal(size=shape).astype(dtype)
    y = np.arange(shape[0], dtype=np.int32) % num_classes
    return x, y


def _init(net, x):
    return jax.jit(net.init)(jax.random.key(0), x)


def _scale_layer(wrong_factor=1.0):
    """``y = x * s`` with a hand-written VJP; ``wrong_factor != 1`` corrupts only ``ds``."""

    @jax.custom_vjp
    def scale(x, s):
        return x * s

    def fwd(x, s):
        return x * s, (x, s)

    def bwd(res, g):
        x, s = res
        return g * s, wrong_factor * jnp.sum(g * x, axis=0)

    scale.defvjp(fwd, bwd)

    def init(key, x):
        return {"s": 1.0 + 0.1 * jax.random.normal(key, (x.shape[-1],), x.dtype)}, {}

    def apply(params, state, x, *, train=False, key=None):
        return scale(x, params["s"]), state

    return Module(init, apply, "scale")


# --------------------------------------------------------------------------- gradcheck


def test_gradcheck_passes_a_correct_mlp():
    net = nn.mlp((8,), 3, activation="tanh")
    x, y = _data((6, 5))
    params, state = _init(net, x)  # float32: gradcheck casts to float64 itself
    rows = gradcheck(supervised_loss(net, CE), params, state, (x, y))
    assert [r.path for r in rows] == ["dense_1/b", "dense_1/w", "dense_3/b", "dense_3/w"]
    assert [r.num_checked for r in rows] == [8, 20, 3, 20]  # all of a small leaf, else 20
    assert all(isinstance(r, GradCheckRow) and r.shape == p.shape for r, p in zip(rows, jax.tree.leaves(params)))
    # float64, eps=1e-6: rounding leaves ~1e-10 absolute, ~1e-9 relative to the leaf's scale
    assert max(r.max_rel_error for r in rows) < 1e-7, format_table(rows)
    assert max(r.max_abs_error for r in rows) < 1e-8
    assert passed(rows)
    assert "FAIL" not in format_table(rows)
    assert not jax.config.read("jax_enable_x64")  # float64 was switched on only inside gradcheck


def test_gradcheck_names_the_wrong_parameter():
    net = nn.serial(nn.dense(4), _scale_layer(wrong_factor=2.0), nn.tanh, nn.dense(3))
    x, y = _data((5, 3))
    params, state = _init(net, x)
    rows = gradcheck(supervised_loss(net, CE), params, state, (x, y))
    by_path = {r.path: r for r in rows}
    assert set(by_path) == {"dense_0/b", "dense_0/w", "scale_1/s", "dense_3/b", "dense_3/w"}
    assert not passed(rows)
    # the doubled ds is off by |g| / max(|2g|, |g|) = 1/2 of the leaf's scale
    assert by_path["scale_1/s"].max_rel_error == pytest.approx(0.5, rel=1e-3)
    failing = [r.path for r in rows if r.max_rel_error > 1e-6]
    assert failing == ["scale_1/s"]  # dx is right, so the layers before it check out
    table = format_table(rows)
    assert [line.split()[0] for line in table.splitlines() if line.endswith("FAIL")] == ["scale_1/s"]
    # with a correct backward the same network passes
    good = nn.serial(nn.dense(4), _scale_layer(), nn.tanh, nn.dense(3))
    assert passed(gradcheck(supervised_loss(good, CE), params, state, (x, y)))


def test_gradcheck_options_and_training_mode():
    net = nn.mlp((16,), 3, dropout_rate=0.3, norm="batch")
    x, y = _data((8, 4))
    params, state = _init(net, x)
    loss_fn = supervised_loss(net, CE)
    rows = gradcheck(loss_fn, params, state, (x, y), max_elements_per_param=3)
    assert [r.num_checked for r in rows] == [3] * len(rows)
    assert passed(rows)
    # training mode: a fixed key fixes the dropout mask, and batch statistics are differentiable
    rows = gradcheck(loss_fn, params, state, (x, y), key=jax.random.key(3), max_elements_per_param=5)
    assert passed(rows), format_table(rows)
    with pytest.raises(ValueError, match="max_elements_per_param"):
        gradcheck(loss_fn, params, state, (x, y), max_elements_per_param=0)


# --------------------------------------------------------------------------- layer_gradients


class _Case(NamedTuple):
    net: Module
    params: dict
    state: dict
    x: np.ndarray
    y: np.ndarray
    layer_grads: list  # LayerGrad with numpy arrays
    grad_params: dict  # jax.grad of the whole network's loss w.r.t. params ...
    grad_x: np.ndarray  # ... and w.r.t. its input
    logits: np.ndarray


@functools.lru_cache(maxsize=None)
def _case(kind) -> _Case:
    """A float64 network, its layer-by-layer backward pass and jax.grad's; computed once per kind."""
    with jax.enable_x64(True):
        if kind == "mlp":
            net = nn.mlp((16, 8), 3, activation="tanh")
            x, y = _data((6, 2, 5), dtype=np.float64)
        else:
            net = nn.cnn((4,), 3, hidden_sizes=(8,))
            x, y = _data((4, 6, 6, 2), dtype=np.float64)
        params, state = jax.device_get(_init(net, x))
        lgs = LAYER_GRADS(net, params, state, x, y, CE)

        @jax.jit
        def reference(p, x):
            def loss(p, x):
                logits = net.apply(p, state, x, train=False, key=None)[0]
                return CE(logits, y), logits

            (_, logits), (grad_p, grad_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, x)
            return grad_p, grad_x, logits

        grad_p, grad_x, logits = jax.device_get(reference(params, x))
    return _Case(net, params, state, x, y, lgs, grad_p, grad_x, logits)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_layer_grads_reproduce_jax_grad(kind):
    c = _case(kind)
    lgs = c.layer_grads
    assert [lg.name for lg in lgs] == [name for name, _ in c.net.children]
    assert all(isinstance(lg, LayerGrad) for lg in lgs)
    assembled = param_grads(lgs)
    assert jax.tree.structure(assembled) == jax.tree.structure(c.params)
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(assembled), jax.tree.leaves(c.grad_params)):
        assert a.dtype == np.float64
        # float64, the same operations in another grouping: agreement to ~1e-15; 1e-6 per the spec
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-15, err_msg=jax.tree_util.keystr(path))
    # the first layer's dL/d(input) is the gradient with respect to the network's input
    np.testing.assert_allclose(lgs[0].grad_input, c.grad_x, rtol=1e-6, atol=1e-15)
    # parameter-free layers report {}
    assert all((lg.grad_params == {}) == (lg.name not in c.params) for lg in lgs)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_backward_signal_is_passed_on_and_forward_is_chained(kind):
    c = _case(kind)
    lgs = c.layer_grads
    np.testing.assert_array_equal(lgs[0].input, c.x)
    for earlier, later in zip(lgs[:-1], lgs[1:]):
        np.testing.assert_array_equal(later.grad_input, earlier.grad_output)  # exact: the same array
        np.testing.assert_array_equal(later.input, earlier.output)
        assert earlier.grad_output.shape == earlier.output.shape
    np.testing.assert_allclose(lgs[-1].output, c.logits, rtol=1e-12)
    # the backward pass starts from dL/d(logits) = (softmax - onehot) / N
    softmax = np.exp(c.logits - c.logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    start = (softmax - np.eye(3)[c.y]) / c.x.shape[0]
    np.testing.assert_allclose(lgs[-1].grad_output, start, rtol=1e-12, atol=1e-15)


def test_dense_grads_are_the_textbook_formulas():
    c = _case("mlp")
    dense = [lg for lg in c.layer_grads if lg.name.startswith("dense")]
    assert len(dense) == 3
    for lg in dense:
        # y = x @ w + b  =>  dL/dw = x^T dL/dy,  dL/db = sum over the batch of dL/dy,  dL/dx = dL/dy w^T
        # float64 matmuls of <= 16 terms: ~1e-16 relative; 1e-12 leaves room
        np.testing.assert_allclose(lg.grad_params["w"], lg.input.T @ lg.grad_output, rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(lg.grad_params["b"], lg.grad_output.sum(axis=0), rtol=1e-12, atol=1e-16)
        w = c.params[lg.name]["w"]
        np.testing.assert_allclose(lg.grad_input, lg.grad_output @ w.T, rtol=1e-12, atol=1e-16)


def test_layer_grads_in_training_mode_match_net_apply(x64):
    net = nn.mlp((16,), 3, dropout_rate=0.5, norm="batch")
    x, y = _data((8, 4), dtype=np.float64)
    params, state = _init(net, x)
    key = jax.random.key(7)
    lgs = LAYER_GRADS(net, params, state, x, y, CE, train=True, key=key)

    @jax.jit
    def reference(p):
        def loss(p):
            logits = net.apply(p, state, x, train=True, key=key)[0]
            return CE(logits, y), logits

        return jax.grad(loss, has_aux=True)(p)

    expected, logits = reference(params)
    np.testing.assert_allclose(lgs[-1].output, logits, rtol=1e-12)  # same dropout masks: keys split alike
    for a, e in zip(jax.tree.leaves(param_grads(lgs)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-15)


def test_layer_stats_is_jittable_and_consistent(x64):
    c = _case("mlp")
    stats = jax.device_get(jax.jit(layer_stats, static_argnums=(0, 5))(c.net, c.params, c.state, c.x, c.y, CE))
    lgs = c.layer_grads
    names = [lg.name for lg in lgs]
    assert names == ["flatten_0", "dense_1", "tanh_2", "dense_3", "tanh_4", "dense_5"]
    with_params = {"dense_1", "dense_3", "dense_5"}
    expected_keys = {f"{n}/{s}" for n in names for s in ("act_mean", "act_std", "grad_output_norm")}
    assert set(stats) == expected_keys | {f"{n}/grad_norm" for n in with_params} | {"loss"}
    assert all(np.shape(v) == () for v in stats.values())
    # float64 reductions of <= 100 terms: ~1e-15 relative; 1e-10 leaves room
    for lg in lgs:
        np.testing.assert_allclose(stats[f"{lg.name}/act_mean"], lg.output.mean(), rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(stats[f"{lg.name}/act_std"], lg.output.std(), rtol=1e-10)
        np.testing.assert_allclose(stats[f"{lg.name}/grad_output_norm"], np.linalg.norm(lg.grad_output), rtol=1e-10)
        if lg.name in with_params:
            g = lg.grad_params
            norm = np.sqrt((g["w"] ** 2).sum() + (g["b"] ** 2).sum())
            np.testing.assert_allclose(stats[f"{lg.name}/grad_norm"], norm, rtol=1e-10)
    logits = c.logits - c.logits.max(axis=1, keepdims=True)
    loss = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(c.y)), c.y])
    np.testing.assert_allclose(stats["loss"], loss, rtol=1e-12)


def test_layer_gradients_rejects_non_serial():
    with pytest.raises(ValueError, match="serial"):
        layer_gradients(nn.dense(3), {}, {}, np.zeros((1, 2)), np.zeros((1,), np.int32), CE)
