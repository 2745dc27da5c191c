"""Networks as ``(init, apply)`` pairs over plain parameter pytrees."""

from fntrain.nn import initializers
from fntrain.nn.core import Module, output_shape, residual, serial, stateless
from fntrain.nn.layers import (
    ACTIVATIONS,
    activation,
    avg_pool,
    batch_norm,
    conv2d,
    dense,
    dropout,
    embedding,
    flatten,
    gelu,
    global_avg_pool,
    identity,
    layer_norm,
    max_pool,
    relu,
    sigmoid,
    softplus,
    tanh,
)
from fntrain.nn.models import cnn, mlp
from fntrain.nn.summary import count_params, summary

__all__ = [
    "ACTIVATIONS",
    "Module",
    "activation",
    "avg_pool",
    "batch_norm",
    "cnn",
    "conv2d",
    "count_params",
    "dense",
    "dropout",
    "embedding",
    "flatten",
    "gelu",
    "global_avg_pool",
    "identity",
    "initializers",
    "layer_norm",
    "max_pool",
    "mlp",
    "output_shape",
    "relu",
    "residual",
    "serial",
    "sigmoid",
    "softplus",
    "stateless",
    "summary",
    "tanh",
]
