"""The network protocol and its combinators.

A network is a :class:`Module`, a NamedTuple of two pure functions::

    init(key, x) -> (params, state)
    apply(params, state, x, *, train, key) -> (y, state)

``params`` and ``state`` are nested dicts of arrays. ``state`` holds what is
not trained by gradients (batch-norm running statistics); layers without it
return ``{}``. ``init`` reads only ``x.shape`` and ``x.dtype``, so ``x`` may be
a ``jax.ShapeDtypeStruct``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Params = dict[str, Any]
State = dict[str, Any]


class Module(NamedTuple):
    """A network: a pair of pure functions plus a name for summaries.

    Attributes:
      init: ``init(key, x) -> (params, state)``.
      apply: ``apply(params, state, x, *, train, key) -> (y, state)``.
      name: short name; it becomes the parameter key in :func:`serial`.
      children: ``(key, sub-module)`` pairs of a sequence (``serial``), for summaries
        and per-layer gradients; empty for other modules.
    """

    init: Callable[..., tuple[Params, State]]
    apply: Callable[..., tuple[Any, State]]
    name: str = "module"
    children: tuple = ()


def stateless(fn: Callable[[jax.Array], jax.Array], name: str) -> Module:
    """A parameter-free layer computing ``fn(x)``."""

    def init(key, x):
        del key, x
        return {}, {}

    def apply(params, state, x, *, train=False, key=None):
        del params, train, key
        return fn(x), state

    return Module(init, apply, name)


def output_shape(module: Module, params: Params, state: State, x) -> jax.ShapeDtypeStruct:
    """Shape and dtype of ``module``'s output on ``x``, computed without running it."""
    out, _ = jax.eval_shape(lambda p, s, x: module.apply(p, s, x, train=False, key=None), params, state, x)
    return out


def _sequence(names: list[str], layers: tuple[Module, ...]) -> Module:
    """Applies ``layers`` in order, keeping each one's params and state under its name."""

    def init(key, x):
        params, state = {}, {}
        for name, layer, layer_key in zip(names, layers, jax.random.split(key, len(layers))):
            p, s = layer.init(layer_key, x)
            if p:
                params[name] = p
            if s:
                state[name] = s
            x = output_shape(layer, p, s, x)
        return params, state

    def apply(params, state, x, *, train=False, key=None):
        keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
        new_state = {}
        for name, layer, layer_key in zip(names, layers, keys):
            x, s = layer.apply(params.get(name, {}), state.get(name, {}), x, train=train, key=layer_key)
            if s:
                new_state[name] = s
        return x, new_state

    return Module(init, apply, "serial", tuple(zip(names, layers)))


def serial(*layers: Module) -> Module:
    """Composes layers in sequence; parameters are keyed ``"{name}_{index}"``.

    Layers without parameters (activations, pooling) leave no key in ``params``.
    ``net.children`` holds the ``(key, layer)`` pairs, for summaries and per-layer gradients.

    Example:
      >>> net = serial(dense(128), relu, dense(10))
      >>> params, state = net.init(jax.random.key(0), jnp.zeros((1, 64)))
      >>> sorted(params)
      ['dense_0', 'dense_2']
      >>> logits, state = net.apply(params, state, x, train=False, key=None)
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    return _sequence([f"{layer.name}_{i}" for i, layer in enumerate(layers)], layers)


def named_serial(*named_layers: tuple[str, Module]) -> Module:
    """Like :func:`serial`, but each layer's parameters live under the name given.

    Example:
      >>> net = named_serial(("conv", conv2d(8)), ("bn", batch_norm()), ("act", relu))
      >>> params, state = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
      >>> sorted(params), sorted(state)
      (['bn', 'conv'], ['bn'])
    """
    names = [name for name, _ in named_layers]
    if not names:
        raise ValueError("named_serial needs at least one (name, layer) pair")
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"named_serial names must be distinct non-empty strings, got {names}")
    return _sequence(names, tuple(layer for _, layer in named_layers))


def residual(*layers: Module) -> Module:
    """``x + serial(*layers)(x)``; the branch must keep ``x``'s shape.

    Parameters live under ``"branch"`` so that residual blocks nest cleanly.
    """
    branch = serial(*layers) if len(layers) != 1 else layers[0]

    def init(key, x):
        params, state = branch.init(key, x)
        out = output_shape(branch, params, state, x)
        if out.shape != tuple(x.shape):
            raise ValueError(
                f"residual: the branch maps shape {tuple(x.shape)} to {out.shape}; "
                "a residual branch must keep its input's shape (add a projection inside the branch "
                "or drop the residual)."
            )
        return ({"branch": params} if params else {}), ({"branch": state} if state else {})

    def apply(params, state, x, *, train=False, key=None):
        y, s = branch.apply(params.get("branch", {}), state.get("branch", {}), x, train=train, key=key)
        return x + y, ({"branch": s} if s else {})

    return Module(init, apply, "residual")
