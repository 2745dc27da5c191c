"""Ready-made networks built from the layers."""

from __future__ import annotations

from typing import Optional, Sequence

from fntrain.nn import layers as L
from fntrain.nn.core import Module, serial

_NORMS = {"batch": L.batch_norm, "layer": L.layer_norm}


def _norm(norm: Optional[str]) -> list[Module]:
    if norm is None:
        return []
    try:
        return [_NORMS[norm]()]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(_NORMS)} or None") from None


def _kernel_init(activation: str) -> str:
    # He initialisation keeps ReLU-family activations at unit variance; Glorot suits saturating ones.
    return "he_normal" if activation in ("relu", "gelu", "softplus") else "glorot_uniform"


def mlp(
    hidden_sizes: Sequence[int],
    num_outputs: int,
    *,
    activation: str = "relu",
    dropout_rate: float = 0.0,
    norm: Optional[str] = None,
) -> Module:
    """A multi-layer perceptron; inputs are flattened first.

    ``[N, ...] -> flatten -> (dense -> [norm] -> activation -> [dropout]) * len(hidden_sizes) -> dense``

    Returns ``[N, num_outputs]`` outputs (logits for classification).
    """
    act, w_init = L.activation(activation), _kernel_init(activation)
    layers: list[Module] = [L.flatten]
    for width in hidden_sizes:
        layers += [L.dense(width, w_init=w_init), *_norm(norm), act]
        if dropout_rate:
            layers.append(L.dropout(dropout_rate))
    layers.append(L.dense(num_outputs, w_init="glorot_uniform"))
    return serial(*layers)


def cnn(
    channels: Sequence[int],
    num_outputs: int,
    *,
    kernel_size: int = 3,
    pool: Optional[str] = "max",
    hidden_sizes: Sequence[int] = (128,),
    activation: str = "relu",
    dropout_rate: float = 0.0,
    norm: Optional[str] = None,
) -> Module:
    """A small convolutional network for NHWC images.

    ``(conv -> [norm] -> activation -> [2x2 pool]) * len(channels) -> flatten -> mlp head``

    Pooling uses SAME padding, so odd sizes (7x7) shrink to ``ceil(H / 2)``.
    Shapes: ``x: [N, H, W, C]`` -> ``[N, num_outputs]``.
    """
    if pool not in ("max", "avg", None):
        raise ValueError(f"cnn pool must be 'max', 'avg' or None, got {pool!r}")
    act, w_init = L.activation(activation), _kernel_init(activation)
    layers: list[Module] = []
    for c in channels:
        layers += [L.conv2d(c, kernel_size, w_init=w_init), *_norm(norm), act]
        if pool == "max":
            layers.append(L.max_pool(2, padding="SAME"))
        elif pool == "avg":
            layers.append(L.avg_pool(2, padding="SAME"))
    layers.append(L.flatten)
    for width in hidden_sizes:
        layers += [L.dense(width, w_init=w_init), act]
        if dropout_rate:
            layers.append(L.dropout(dropout_rate))
    layers.append(L.dense(num_outputs, w_init="glorot_uniform"))
    return serial(*layers)
