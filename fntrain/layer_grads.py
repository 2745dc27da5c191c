"""Backpropagation made visible: the chain rule run one ``serial`` layer at a time.

``jax.grad`` of a whole network hides the backward pass. :func:`layer_gradients`
runs it by hand: a forward pass that keeps each layer's input, output and
``jax.vjp``, then a backward pass that feeds each layer's ``dL/d(input)`` to the
layer before it as that layer's ``dL/d(output)``. The per-layer parameter
gradients it finds are exactly ``jax.grad``'s (the tests check this).

Example:
  >>> net = nn.mlp((32,), 10)
  >>> for lg in layer_gradients(net, params, state, x, y, losses.softmax_cross_entropy):
  ...     print(lg.name, lg.output.shape, jnp.linalg.norm(lg.grad_output))
  >>> # both are pure: jit them with the network and the loss static
  >>> stats = jax.jit(layer_stats, static_argnums=(0, 5))(net, params, state, x, y, loss)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from fntrain.nn.core import Module

__all__ = ["LayerGrad", "layer_gradients", "layer_stats", "param_grads"]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["input", "output", "grad_output", "grad_input", "grad_params"],
    meta_fields=["name"],
)
@dataclasses.dataclass(frozen=True)
class LayerGrad:
    """One layer's forward values and backward gradients.

    A pytree whose leaves are the arrays (``name`` is static), so lists of them pass
    in and out of ``jax.jit``.

    Attributes:
      name: the layer's key in ``serial``, ``f"{layer.name}_{index}"`` (``"dense_1"``).
      input: the layer's input ``x``.
      output: the layer's output ``y``.
      grad_output: ``dL/dy``, same shape as ``output``.
      grad_input: ``dL/dx``, same shape as ``input`` (``float0`` zeros for integer inputs
        such as token ids).
      grad_params: ``dL/d(params)`` as a dict shaped like the layer's params; ``{}`` for
        parameter-free layers (activations, pooling, flatten).
    """

    name: str
    input: Any
    output: Any
    grad_output: Any
    grad_input: Any
    grad_params: dict


def _layers(net: Module) -> tuple[tuple[str, Module], ...]:
    if net.name != "serial" or not net.children:
        raise ValueError(
            f"layer_gradients needs a network built by fntrain.nn.serial (or mlp/cnn), got a {net.name!r} "
            "module; wrap it: layer_gradients(serial(net), ...), which treats it as a single layer."
        )
    return net.children


def layer_gradients(
    net: Module,
    params,
    model_state,
    x,
    y,
    loss: Callable[[Any, Any], jax.Array],
    *,
    train: bool = False,
    key: Optional[jax.Array] = None,
) -> list[LayerGrad]:
    """Forward and backward passes of a ``serial`` network, layer by layer.

    Forward: for layer ``i``, ``out_i, vjp_i = jax.vjp(lambda p, x: apply_i(p, state_i, x), p_i, in_i)``
    and ``in_{i+1} = out_i``. Backward: ``g = dL/d(out_last) = grad(loss(., y))(out_last)``;
    then from the last layer to the first, ``(dL/dp_i, dL/d in_i) = vjp_i(g)`` and
    ``g = dL/d in_i``, which is ``dL/d out_{i-1}``.

    Keys are split as ``serial`` splits them, so with the same ``train`` and ``key`` the
    layers see exactly what ``net.apply`` gives them.

    The function is pure; run eagerly it dispatches every operation on its own, so for
    repeated use jit it: ``jax.jit(layer_gradients, static_argnums=(0, 5),
    static_argnames="train")``.

    Args:
      net: a ``serial`` network (``net.children`` are its layers).
      params, model_state: the network's, as from ``net.init``.
      x: the input batch.
      y: the targets.
      loss: ``loss(outputs, targets) -> scalar``, e.g. ``fntrain.losses.softmax_cross_entropy``.
      train: run the layers in training mode (dropout on, batch statistics).
      key: the PRNG key for training mode; None in evaluation.

    Returns:
      One :class:`LayerGrad` per layer, first to last.

    Raises:
      ValueError: ``net`` is not a ``serial`` network.
    """
    layers = _layers(net)
    keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))

    forward = []  # (name, input, output, vjp_fn)
    h = x
    for (name, layer), layer_key in zip(layers, keys):
        state = model_state.get(name, {})

        def f(p, inp, layer=layer, state=state, layer_key=layer_key):
            return layer.apply(p, state, inp, train=train, key=layer_key)[0]

        out, vjp_fn = jax.vjp(f, params.get(name, {}), h)
        forward.append((name, h, out, vjp_fn))
        h = out

    g = jax.grad(lambda out: loss(out, y))(h)
    result = []
    for name, inp, out, vjp_fn in reversed(forward):
        grad_params, grad_input = vjp_fn(g)
        result.append(LayerGrad(name, inp, out, g, grad_input, dict(grad_params)))
        g = grad_input
    return result[::-1]


def param_grads(layer_grads: list[LayerGrad]) -> dict:
    """The per-layer ``grad_params`` assembled into a tree shaped like ``params`` (``jax.grad``'s)."""
    return {lg.name: lg.grad_params for lg in layer_grads if lg.grad_params}


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def layer_stats(
    net: Module,
    params,
    model_state,
    x,
    y,
    loss: Callable[[Any, Any], jax.Array],
    *,
    train: bool = False,
    key: Optional[jax.Array] = None,
) -> dict[str, jax.Array]:
    """Per-layer gradient norms and activation statistics, for logging.

    A pure function of arrays (no host transfers), so it can be jitted with ``net`` and
    ``loss`` static: ``jax.jit(layer_stats, static_argnums=(0, 5))``. Values are scalar
    arrays; ``float(v)`` them at log time.

    Keys, for each layer ``name`` (``"dense_1"``, ``"relu_2"``, ...):
      ``{name}/act_mean``, ``{name}/act_std``: mean and std of the layer's output.
      ``{name}/grad_output_norm``: L2 norm of ``dL/d(output)``, the backward signal
        reaching the layer; its decay from last to first layer shows vanishing gradients.
      ``{name}/grad_norm``: L2 norm of the layer's parameter gradients (layers with
        parameters only; this is the per-layer share of the step's ``grad_norm``).
    plus ``loss``, the loss on this batch.

    Args: as :func:`layer_gradients`.
    """
    stats = {}
    layer_grads = layer_gradients(net, params, model_state, x, y, loss, train=train, key=key)
    for lg in layer_grads:
        out = lg.output
        stats[f"{lg.name}/act_mean"] = jnp.mean(out)
        stats[f"{lg.name}/act_std"] = jnp.std(out)
        stats[f"{lg.name}/grad_output_norm"] = _norm(lg.grad_output)
        if lg.grad_params:
            stats[f"{lg.name}/grad_norm"] = _norm(lg.grad_params)
    stats["loss"] = loss(layer_grads[-1].output, y)
    return stats
