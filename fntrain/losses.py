"""Losses: ``loss(outputs, targets, *, weights=None) -> scalar``, the mean over the batch.

Built on ``optax.losses``; what this module adds is one calling convention, the handling
of integer versus one-hot targets, and ``weights``: ``[N]`` per-example weights (1 for a
real example, 0 for a padding row), giving ``sum_i w_i l_i / sum_i w_i`` where ``l_i`` is
example ``i``'s mean over its elements. The training loop pads a final partial batch to
the full batch size with weight-0 rows, so every batch has one shape on any device count.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from fntrain.hyperparams import known_zero


def weighted_mean(values: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """The mean of ``values [N, ...]``, each example ``i`` weighted by ``weights[i]``.

    With ``weights=None`` this is ``jnp.mean(values)``; with weights it is the mean over the
    examples of weight 1 (padding rows of weight 0 count for nothing).
    """
    if weights is None:
        return jnp.mean(values)
    per_example = jnp.mean(values.reshape(values.shape[0], -1), axis=1)
    weights = weights.astype(per_example.dtype)
    total = jnp.sum(weights)
    return jnp.sum(per_example * weights) / jnp.where(total > 0, total, 1)


def mean_squared_error(predictions: jax.Array, targets: jax.Array, *, weights: Optional[jax.Array] = None) -> jax.Array:
    """Mean over all elements of ``(predictions - targets) ** 2``.

    Shapes: ``predictions, targets: [N, ...]``, equal; a mismatch such as ``[N, 1]``
    against ``[N]`` is an error rather than a silent ``[N, N]`` broadcast.
    """
    if predictions.shape != targets.shape:
        raise ValueError(
            f"mean_squared_error: predictions {predictions.shape} and targets {targets.shape} differ in shape"
        )
    return weighted_mean(optax.losses.squared_error(predictions, targets), weights)


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0, weights: Optional[jax.Array] = None
) -> jax.Array:
    """Mean softmax cross-entropy.

    Args:
      logits: ``[N, C]`` float (or ``[N, T, C]`` for sequences).
      labels: ``[N]`` integer class ids, or ``[N, C]`` one-hot / soft targets.
      label_smoothing: mixes targets with the uniform distribution: ``(1 - s) * y + s / C``.
      weights: ``[N]`` per-example weights (see the module docstring).
    """
    num_classes = logits.shape[-1]
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if known_zero(label_smoothing):
            return weighted_mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels), weights)
        labels = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    if labels.shape != logits.shape:
        raise ValueError(f"softmax_cross_entropy: targets {labels.shape} do not match logits {logits.shape}")
    if not known_zero(label_smoothing):
        labels = optax.smooth_labels(labels, label_smoothing)
    return weighted_mean(optax.losses.softmax_cross_entropy(logits, labels), weights)


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array, *, weights: Optional[jax.Array] = None) -> jax.Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``labels`` in [0, 1] (same shape)."""
    labels = labels.astype(logits.dtype).reshape(logits.shape)
    return weighted_mean(optax.losses.sigmoid_binary_cross_entropy(logits, labels), weights)


def huber(predictions: jax.Array, targets: jax.Array, *, delta: float = 1.0, weights: Optional[jax.Array] = None) -> jax.Array:
    """Mean Huber loss: ``0.5 e^2`` for ``|e| <= delta``, ``delta (|e| - 0.5 delta)`` beyond."""
    if predictions.shape != targets.shape:
        raise ValueError(f"huber: predictions {predictions.shape} and targets {targets.shape} differ in shape")
    return weighted_mean(optax.losses.huber_loss(predictions, targets, delta=delta), weights)


LOSSES = {
    "mean_squared_error": mean_squared_error,
    "mse": mean_squared_error,
    "softmax_cross_entropy": softmax_cross_entropy,
    "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
    "huber": huber,
}

# Losses whose outputs are class logits, so accuracy is a meaningful metric.
CLASSIFICATION = (softmax_cross_entropy, sigmoid_binary_cross_entropy)
