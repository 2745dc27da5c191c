"""Optimizer building blocks that optax leaves to the caller, as optax transformations.

- :func:`ema`: an exponential moving average of the parameters, kept in the optimizer
  state (chain it last), so ``TrainState`` and checkpoints carry it unchanged.
- :func:`group_labels`: parameter groups by regular expressions over parameter paths, the
  labels :func:`optax.multi_transform` takes.
- :func:`plateau_scale` and :func:`make_plateau_observer`: ``optax.contrib.reduce_on_plateau``
  fed from evaluations. The scale lives in the optimizer state; the train step only reads it,
  and the loop updates it with a small jitted function after each validation.

Everything here is pure: state is arrays, hyperparameters are closed over, and nothing
branches in Python on a traced value, so these transformations jit, scan and vmap.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from optax.contrib import ReduceLROnPlateauState, reduce_on_plateau

from fntrain.nn.summary import path_str

__all__ = [
    "EmaState",
    "ema",
    "ema_params",
    "group_labels",
    "label_for",
    "param_paths",
    "make_plateau_observer",
    "plateau_scale",
    "plateau_scale_of",
    "unmatched_groups",
]

# --------------------------------------------------------------------------- EMA


class EmaState(NamedTuple):
    """State of :func:`ema`.

    Attributes:
      count: ``[] int32``, updates averaged so far.
      ema: the average, shaped like the parameters (``optax.MaskedNode`` where masked out).
    """

    count: jax.Array
    ema: Any


def ema(decay: float, *, warmup: bool = False) -> optax.GradientTransformation:
    """An exponential moving average of the parameters, updated after every update.

    ``update(updates, state, params)`` returns ``updates`` unchanged and moves the average
    towards the new parameters ``params + updates``::

        d_t = decay                               (warmup=False)
        d_t = min(decay, (1 + t) / (10 + t))      (warmup=True, t = updates averaged before)
        ema <- d_t * ema + (1 - d_t) * (params + updates)

    starting from ``ema = params`` at ``init``. The warm-up (TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``) keeps the early average from being
    dominated by the random initial parameters: ``d_0 = 0.1``, ``d_90 = 0.91``.

    Chain it last, so that it sees the final updates: ``optax.chain(optax.adam(1e-3), ema(0.999))``.
    Read the average with :func:`ema_params`.

    Args:
      decay: in ``[0, 1)``; the average's horizon is about ``1 / (1 - decay)`` updates.
      warmup: use the warm-up above.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema decay must be in [0, 1), got {decay!r}")

    def init(params):
        return EmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.copy, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("ema needs the parameters: call update(updates, state, params)")
        d = jnp.asarray(decay, jnp.float32)
        if warmup:
            t = state.count.astype(jnp.float32)
            d = jnp.minimum(d, (1.0 + t) / (10.0 + t))
        new_params = optax.apply_updates(params, updates)
        average = jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), state.ema, new_params)
        return updates, EmaState(optax.safe_increment(state.count), average)

    return optax.GradientTransformation(init, update)


def _is_masked(x) -> bool:
    return isinstance(x, optax.MaskedNode)


def ema_params(opt_state, params) -> Optional[Any]:
    """The parameters averaged by the :func:`ema` in ``opt_state``, or None if it has none.

    Where the average was masked out (frozen parameters), the parameters themselves.

    Raises:
      ValueError: ``opt_state`` holds more than one ``EmaState``.
    """
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, EmaState)) if isinstance(s, EmaState)]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"the optimizer state holds {len(found)} EMAs of the parameters; expected one")
    return jax.tree.map(lambda e, p: p if _is_masked(e) else e, found[0].ema, params, is_leaf=_is_masked)


# --------------------------------------------------------------------------- parameter groups

DEFAULT_GROUP = "default"


def group_label(index: int) -> str:
    """The label of group ``index`` (``group_0``, ...): a key of the optimizer state, so plain."""
    return f"group_{index}"


def label_for(patterns: Sequence[str | re.Pattern], path: str) -> str:
    """The group of the parameter at ``path``: ``group_i`` for the first pattern found in it, else ``default``."""
    for i, pattern in enumerate(patterns):
        if re.search(pattern, path):
            return group_label(i)
    return DEFAULT_GROUP


def group_labels(patterns: Sequence[str]) -> Callable[[Any], Any]:
    """``labels(params)``: each parameter's group, for :func:`optax.multi_transform`.

    A parameter belongs to the first group whose pattern matches its path somewhere
    (``re.search``; anchor with ``^`` and ``$``), the path as :func:`fntrain.nn.summary.path_str`
    writes it (``dense_1/w``), and to ``"default"`` if none does.

    Example:
      >>> labels = group_labels([r"^dense_0/", r"/b$"])
      >>> labels({"dense_0": {"w": w, "b": b}, "dense_2": {"w": w, "b": b}})
      {'dense_0': {'b': 'group_0', 'w': 'group_0'}, 'dense_2': {'b': 'group_1', 'w': 'default'}}
    """
    compiled = [re.compile(p) for p in patterns]

    def labels(tree):
        return jax.tree_util.tree_map_with_path(lambda path, _: label_for(compiled, path_str(path)), tree)

    return labels


def unmatched_groups(patterns: Sequence[str], params) -> list[int]:
    """Indices of the patterns that no parameter path matches (a typo, or the wrong model)."""
    paths = param_paths(params)
    return [i for i, p in enumerate(patterns) if not any(re.search(p, path) for path in paths)]


# --------------------------------------------------------------------------- reduce on plateau


def plateau_scale() -> optax.GradientTransformation:
    """Multiplies the updates by the scale of an ``optax.contrib.reduce_on_plateau`` state.

    The state is optax's ``ReduceLROnPlateauState`` (``scale`` starts at 1), but ``update``
    only reads it: the scale changes at evaluations, by :func:`make_plateau_observer`, which
    is how a validation metric reaches the optimizer without a host callback inside the step.
    Chain it after the optimizer (before :func:`ema`).
    """

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates), state

    return optax.GradientTransformation(reduce_on_plateau().init, update)


def _is_plateau(x) -> bool:
    return isinstance(x, ReduceLROnPlateauState)


def _placed_like(new, old):
    """``new`` on ``old``'s devices and sharding (traced values, under vmap or jit, stay as they are)."""
    if isinstance(old, jax.core.Tracer) or not isinstance(old, jax.Array):
        return new
    return jax.device_put(new, old.sharding)


def make_plateau_observer(
    *,
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    min_scale: float = 0.0,
    mode: str = "min",
) -> Callable[[Any, float], Any]:
    """``observe(opt_state, value) -> opt_state``: one evaluation's metric fed to every
    :func:`plateau_scale` state in ``opt_state`` (the rest is returned as it is).

    The update is ``optax.contrib.reduce_on_plateau``'s with these arguments: after
    ``patience`` values without improvement (by more than ``rtol`` relative and ``atol``),
    ``scale *= factor`` (floored at ``min_scale``), then ``cooldown`` values are ignored.
    ``mode="max"`` watches ``-value``. The new state is computed by a jitted function of
    the small plateau states alone, so calling it costs one tiny dispatch. It vmaps over a
    population's stacked optimizer states and values (``jax.vmap(observe)``).
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    inner = reduce_on_plateau(factor=factor, patience=patience, rtol=rtol, atol=atol, cooldown=cooldown, min_scale=min_scale)
    sign = 1.0 if mode == "min" else -1.0

    @jax.jit
    def step(states, value):
        return [inner.update({}, s, value=sign * value)[1] for s in states]

    def observe(opt_state, value):
        leaves, treedef = jax.tree.flatten(opt_state, is_leaf=_is_plateau)
        where = [i for i, leaf in enumerate(leaves) if _is_plateau(leaf)]
        if not where:
            return opt_state
        old = [leaves[i] for i in where]
        new = step(old, jnp.asarray(value, jnp.float32))
        for i, state, before in zip(where, new, old):  # placed where the old state was (the step's shardings)
            leaves[i] = jax.tree.map(_placed_like, state, before)
        return jax.tree.unflatten(treedef, leaves)

    return observe


def plateau_scale_of(opt_state) -> Optional[jax.Array]:
    """The scale of the first :func:`plateau_scale` state in ``opt_state``, or None."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(s)]
    return found[0].scale if found else None


def param_paths(params) -> list[str]:
    """Every parameter's path, ``dense_0/w`` style, in tree order."""
    return [path_str(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
