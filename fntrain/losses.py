"""Losses: ``loss(outputs, targets) -> scalar``, the mean over the batch.

Built on ``optax.losses``; what this module adds is one calling convention and
the handling of integer versus one-hot targets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over all elements of ``(predictions - targets) ** 2``.

    Shapes: ``predictions, targets: [N, ...]``, equal; a mismatch such as ``[N, 1]``
    against ``[N]`` is an error rather than a silent ``[N, N]`` broadcast.
    """
    if predictions.shape != targets.shape:
        raise ValueError(
            f"mean_squared_error: predictions {predictions.shape} and targets {targets.shape} differ in shape"
        )
    return jnp.mean(optax.losses.squared_error(predictions, targets))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy.

    Args:
      logits: ``[N, C]`` float.
      labels: ``[N]`` integer class ids, or ``[N, C]`` one-hot / soft targets.
      label_smoothing: mixes targets with the uniform distribution: ``(1 - s) * y + s / C``.
    """
    num_classes = logits.shape[-1]
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if label_smoothing == 0.0:
            return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))
        labels = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    if labels.shape != logits.shape:
        raise ValueError(f"softmax_cross_entropy: targets {labels.shape} do not match logits {logits.shape}")
    if label_smoothing:
        labels = optax.smooth_labels(labels, label_smoothing)
    return jnp.mean(optax.losses.softmax_cross_entropy(logits, labels))


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``labels`` in [0, 1] (same shape)."""
    labels = labels.astype(logits.dtype).reshape(logits.shape)
    return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits, labels))


def huber(predictions: jax.Array, targets: jax.Array, *, delta: float = 1.0) -> jax.Array:
    """Mean Huber loss: ``0.5 e^2`` for ``|e| <= delta``, ``delta (|e| - 0.5 delta)`` beyond."""
    if predictions.shape != targets.shape:
        raise ValueError(f"huber: predictions {predictions.shape} and targets {targets.shape} differ in shape")
    return jnp.mean(optax.losses.huber_loss(predictions, targets, delta=delta))


LOSSES = {
    "mean_squared_error": mean_squared_error,
    "mse": mean_squared_error,
    "softmax_cross_entropy": softmax_cross_entropy,
    "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
    "huber": huber,
}

# Losses whose outputs are class logits, so accuracy is a meaningful metric.
CLASSIFICATION = (softmax_cross_entropy, sigmoid_binary_cross_entropy)
