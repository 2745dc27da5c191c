"""Metrics by name, exact over a whole split, against scikit-learn on the same predictions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk

import fntrain as ft
from fntrain import metrics
from fntrain.evaluation import evaluate_arrays, make_eval_stats_step, reduce_batches
from fntrain.state import TrainState


def regression_data(n=437, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, :d] * [1.0, -2.0, 0.5][:d] + 1.5 + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    return x, y


def identity_loss_fn(names):
    """A loss_fn whose outputs are the inputs' first columns: the predictions are known exactly."""
    net = ft.nn.stateless(lambda x: x[:, :3], "first_columns")
    fns = {name: metrics.METRICS[name] for name in names}
    return ft.supervised_loss(net, ft.losses.mean_squared_error, metric_fns=fns)


@pytest.mark.parametrize("batch_size", [1, 7, 100, 437, 1000])
def test_r2_mae_mse_over_a_split_equal_scikit_learn_for_any_batch_size(batch_size):
    x, y = regression_data()
    predictions = x[:, :3]
    loss_fn = identity_loss_fn(["r2", "mean_absolute_error", "mean_squared_error", "root_mean_squared_error"])
    got = ft.evaluate(loss_fn, {}, {}, (x, y), batch_size=batch_size)
    # float32 predictions, sums added in float64 on the host: 1e-5 is float32 rounding of the inputs.
    assert got["r2"] == pytest.approx(sk.r2_score(y, predictions), abs=1e-5)
    assert got["mean_absolute_error"] == pytest.approx(sk.mean_absolute_error(y, predictions), abs=1e-5)
    assert got["mean_squared_error"] == pytest.approx(sk.mean_squared_error(y, predictions), rel=1e-5)
    assert got["root_mean_squared_error"] == pytest.approx(np.sqrt(sk.mean_squared_error(y, predictions)), rel=1e-5)
    assert got["loss"] == pytest.approx(sk.mean_squared_error(y, predictions), rel=1e-5)


def test_r2_is_not_the_mean_of_per_batch_r2():
    """Why the sums: averaging per-batch R^2 gives another (wrong) number."""
    x, y = regression_data()
    p = x[:, :3]
    per_batch = np.mean([float(metrics.r2(p[i:i + 50], y[i:i + 50])) for i in range(0, 400, 50)])
    exact = sk.r2_score(y[:400], p[:400])
    assert abs(per_batch - exact) > 1e-3
    loss_fn = identity_loss_fn(["r2"])
    assert ft.evaluate(loss_fn, {}, {}, (x[:400], y[:400]), batch_size=50)["r2"] == pytest.approx(exact, abs=1e-5)


def test_r2_of_a_constant_column_follows_scikit_learn():
    y = np.stack([np.full(6, 2.0), np.arange(6.0)], axis=1).astype(np.float32)
    exact = y.copy()
    off = y + np.float32([[0.5, 0.5]])
    assert float(metrics.r2(jnp.asarray(exact), jnp.asarray(y))) == pytest.approx(sk.r2_score(y, exact))
    assert float(metrics.r2(jnp.asarray(off), jnp.asarray(y))) == pytest.approx(sk.r2_score(y, off), abs=1e-6)


def test_one_dimensional_targets_and_weights():
    rng = np.random.default_rng(1)
    p, y = rng.normal(size=(40,)).astype(np.float32), rng.normal(size=(40,)).astype(np.float32)
    w = (np.arange(40) < 30).astype(np.float32)  # the last 10 are padding
    assert float(metrics.r2(p, y, w)) == pytest.approx(sk.r2_score(y[:30], p[:30]), abs=1e-5)
    mae = metrics.METRICS["mean_absolute_error"]
    assert float(mae(p, y, w)) == pytest.approx(sk.mean_absolute_error(y[:30], p[:30]), rel=1e-6)


@pytest.mark.parametrize("batch_size", [3, 64, 500])
def test_classification_metrics_over_a_split_equal_scikit_learn(batch_size):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(301, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=301).astype(np.int32)
    net = ft.nn.stateless(lambda x: x, "identity")
    fns = {"accuracy": metrics.METRICS["accuracy"], "top_5_accuracy": metrics.METRICS["top_5_accuracy"]}
    got = ft.evaluate(ft.supervised_loss(net, ft.losses.softmax_cross_entropy, metric_fns=fns), {}, {}, (logits, labels),
                      batch_size=batch_size)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, logits.argmax(1)), abs=1e-6)
    assert got["top_5_accuracy"] == pytest.approx(sk.top_k_accuracy_score(labels, logits, k=5, labels=range(7)), abs=1e-6)
    assert got["loss"] == pytest.approx(sk.log_loss(labels, jax.nn.softmax(logits), labels=range(7)), rel=1e-5)


def test_a_plain_metric_function_is_example_weighted():
    """A user's fn(outputs, targets) -> batch mean counts each example once, whatever the batches."""
    x, y = regression_data(n=10)

    def max_error(p, t):  # not a mean: per batch it is the batch max
        return jnp.max(jnp.abs(p - t))

    net = ft.nn.stateless(lambda x: x[:, :3], "first_columns")
    loss_fn = ft.supervised_loss(net, ft.losses.mean_squared_error, metric_fns={"max_error": max_error})
    batch_maxes = [np.max(np.abs(x[i:i + 4, :3] - y[i:i + 4])) for i in (0, 4, 8)]
    expected = (4 * batch_maxes[0] + 4 * batch_maxes[1] + 2 * batch_maxes[2]) / 10
    assert ft.evaluate(loss_fn, {}, {}, (x, y), batch_size=4)["max_error"] == pytest.approx(expected, rel=1e-6)


def test_stats_pass_through_jit_and_add_up():
    p, y = jnp.arange(6.0), jnp.arange(6.0)[::-1]
    s = jax.jit(lambda p, y: metrics.stats(metrics.r2, p, y))(p, y)
    assert isinstance(s, metrics.Stats)
    both = jax.tree.map(jnp.add, metrics.stats(metrics.r2, p[:3], y[:3]), metrics.stats(metrics.r2, p[3:], y[3:]))
    np.testing.assert_allclose(both.value(), s.value(), rtol=1e-6)


def test_train_step_metrics_are_batch_values():
    x, y = regression_data(n=64)
    loss_fn = identity_loss_fn(["r2"])
    net_params = {}
    import optax

    ts = TrainState.create(net_params, {}, optax.sgd(0.1), key=jax.random.key(0))
    _, m = ft.make_train_step(loss_fn, optax.sgd(0.1))(ts, (x, y))
    assert float(m["r2"]) == pytest.approx(sk.r2_score(y, x[:, :3]), abs=1e-5)


def test_eval_batches_are_reduced_once_on_the_host():
    x, y = regression_data(n=20)
    step = make_eval_stats_step(identity_loss_fn(["mean_absolute_error"]))
    ts = TrainState(jnp.zeros((), jnp.int32), {}, {}, None, jax.random.key(0))
    a = evaluate_arrays(step, ts, ft.data.Arrays(x, y), 6)
    b = reduce_batches(step, ts, [(x[:10], y[:10]), (x[10:], y[10:])])
    assert a["mean_absolute_error"] == pytest.approx(b["mean_absolute_error"], rel=1e-7)
