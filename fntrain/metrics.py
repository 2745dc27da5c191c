"""Metrics: ``metric(outputs, targets) -> scalar``, the mean over the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _class_ids(labels: jax.Array) -> jax.Array:
    return labels if jnp.issubdtype(labels.dtype, jnp.integer) else jnp.argmax(labels, axis=-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max logit is the label.

    Shapes: ``logits: [..., C]``; ``labels: [...]`` int or ``[..., C]`` one-hot (``[N, C]``
    for classification, ``[B, T, V]`` for sequences).
    """
    return jnp.mean(jnp.argmax(logits, axis=-1) == _class_ids(labels))


def top_k_accuracy(logits: jax.Array, labels: jax.Array, *, k: int = 5) -> jax.Array:
    """Fraction of rows whose label is among the ``k`` largest logits (ties broken by ``lax.top_k``)."""
    _, top = jax.lax.top_k(logits, k)
    return jnp.mean(jnp.any(top == _class_ids(labels)[..., None], axis=-1))


def binary_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of elements where ``logits > 0`` agrees with ``labels > 0.5``."""
    return jnp.mean((logits > 0) == (labels.reshape(logits.shape) > 0.5))


def mean_absolute_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over all elements of ``|predictions - targets|``."""
    return jnp.mean(jnp.abs(predictions - targets))


METRICS = {
    "accuracy": accuracy,
    "top_5_accuracy": top_k_accuracy,
    "binary_accuracy": binary_accuracy,
    "mean_absolute_error": mean_absolute_error,
}
