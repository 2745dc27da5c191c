"""Losses and metrics against hand-written NumPy, and their gradients against finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_grads_match
from fntrain import losses, metrics


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.fixture
def logits():
    return np.asarray(jax.random.normal(jax.random.key(0), (6, 4))) * 2.0


LABELS = np.array([0, 3, 1, 1, 2, 0])


def test_softmax_cross_entropy_values(logits):
    expected = -np_log_softmax(logits)[np.arange(6), LABELS].mean()
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, LABELS), expected, rtol=1e-6)
    one_hot = np.eye(4, dtype=np.float32)[LABELS]
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, one_hot), expected, rtol=1e-6)


def test_label_smoothing_matches_hand_computation(logits):
    s = 0.1
    targets = (1 - s) * np.eye(4)[LABELS] + s / 4
    expected = -(targets * np_log_softmax(logits)).sum(-1).mean()
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, LABELS, label_smoothing=s), expected, rtol=1e-6)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, np.eye(4, dtype=np.float32)[LABELS], label_smoothing=s),
        expected,
        rtol=1e-6,
    )


def test_regression_and_binary_losses_values(logits):
    targets = np.asarray(jax.random.normal(jax.random.key(1), logits.shape))
    np.testing.assert_allclose(losses.mean_squared_error(logits, targets), ((logits - targets) ** 2).mean(), rtol=1e-6)
    err = np.abs(logits - targets)
    huber = np.where(err <= 1.5, 0.5 * err**2, 1.5 * (err - 0.75)).mean()
    np.testing.assert_allclose(losses.huber(logits, targets, delta=1.5), huber, rtol=1e-6)
    labels = (targets > 0).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
    np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(logits, labels), bce, rtol=1e-5)


def test_shape_mismatch_is_an_error_not_a_broadcast():
    with pytest.raises(ValueError, match="differ in shape"):
        losses.mean_squared_error(jnp.zeros((4, 1)), jnp.zeros((4,)))


LOSS_CASES = [
    ("mse", losses.mean_squared_error, "float"),
    ("huber", functools.partial(losses.huber, delta=0.7), "float"),
    ("softmax_ce_int", losses.softmax_cross_entropy, "int"),
    ("softmax_ce_soft", losses.softmax_cross_entropy, "soft"),
    ("softmax_ce_smoothed", functools.partial(losses.softmax_cross_entropy, label_smoothing=0.2), "int"),
    ("sigmoid_bce", losses.sigmoid_binary_cross_entropy, "binary"),
]


@pytest.mark.parametrize("name,loss,kind", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_loss_gradients_match_finite_differences(x64, name, loss, kind):
    outputs = jax.random.normal(jax.random.key(0), (5, 3), jnp.float64) * 2
    targets = {
        "float": jax.random.normal(jax.random.key(1), (5, 3), jnp.float64),
        "int": jnp.array([0, 2, 1, 1, 0]),
        "soft": jax.nn.softmax(jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)),
        "binary": (jax.random.normal(jax.random.key(1), (5, 3), jnp.float64) > 0).astype(jnp.float64),
    }[kind]
    assert_grads_match(lambda o: loss(o, targets), outputs)


def test_accuracy_and_top_k(logits):
    top1 = (logits.argmax(-1) == LABELS).mean()
    np.testing.assert_allclose(metrics.accuracy(logits, LABELS), top1)
    np.testing.assert_allclose(metrics.accuracy(logits, np.eye(4)[LABELS]), top1)
    ranks = (-logits).argsort(-1)
    for k in (1, 2, 3, 4):
        expected = np.mean([LABELS[i] in ranks[i, :k] for i in range(6)])
        np.testing.assert_allclose(metrics.top_k_accuracy(logits, LABELS, k=k), expected)
    assert float(metrics.top_k_accuracy(logits, LABELS, k=4)) == 1.0


def test_binary_accuracy_and_mae():
    logits = np.array([[2.0], [-1.0], [0.5], [-3.0]])
    labels = np.array([1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(metrics.binary_accuracy(logits, labels), 0.5)
    np.testing.assert_allclose(metrics.mean_absolute_error(logits[:, 0], labels), np.mean([1.0, 2.0, 0.5, 3.0]))


@pytest.mark.parametrize("name,loss,kind", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_weighted_loss_equals_the_loss_over_the_real_rows(name, loss, kind):
    """Weight-0 padding rows count for nothing, whatever they hold."""
    outputs = jax.random.normal(jax.random.key(0), (8, 3)) * 2
    targets = {
        "float": jax.random.normal(jax.random.key(1), (8, 3)),
        "int": jnp.array([0, 2, 1, 1, 0, 2, 2, 1]),
        "soft": jax.nn.softmax(jax.random.normal(jax.random.key(1), (8, 3))),
        "binary": (jax.random.normal(jax.random.key(1), (8, 3)) > 0).astype(jnp.float32),
    }[kind]
    weights = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
    padded = outputs.at[5:].set(1e6)  # garbage in the padding rows
    # float32: the weighted mean sums per-example means, the plain one all elements: 1e-6.
    np.testing.assert_allclose(loss(padded, targets, weights=weights), loss(outputs[:5], targets[:5]), rtol=1e-6)
