"""A population's train and eval steps: one member's step, ``jax.vmap`` ped over the members.

Every leaf of the population's ``TrainState`` gains a leading member axis ``[M]``. Inside
the vmapped function a member's grid values are tracers, and its network, loss and
optimizer are built from the config with those values in place
(:func:`~fntrain.population.members.with_values`), so one compilation serves every member
while each computes exactly what its single run computes (up to float summation order).

Batches are gathered inside the step from data on the device: the rows ``[M, B]`` (or
``[M, K, B]`` fused) index data set ``d[m]`` of the stacked training data ``[D, N, ...]``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fntrain import config as cfg
from fntrain.evaluation import _as_stats, _example_count
from fntrain.experiment import build_network, build_objective
from fntrain.population.members import with_values
from fntrain.state import TrainState
from fntrain.step import fused, make_step, skipping_nonfinite


class NetShape(NamedTuple):
    """What a member's network is built for: ``num_outputs`` and one example's ``input_shape``."""

    num_outputs: int
    input_shape: tuple


def member_loss_fn(config: cfg.Config, shape: NetShape, values: dict) -> Callable:
    """The ``loss_fn`` of the member whose grid values are ``values`` (tracers or numbers)."""
    c = with_values(config, values)
    net = build_network(c, shape._asdict())  # no standardized targets in a population: no target shape
    return build_objective(c, net)[1]


def member_parts(config: cfg.Config, shape: NetShape, values: dict, total_steps: int):
    """``(loss_fn, optimizer)`` of the member whose grid values are ``values``."""
    optimizer, _ = with_values(config, values).optimizer.build(total_steps)
    return member_loss_fn(config, shape, values), optimizer


def init_opt_state(config: cfg.Config, shape: NetShape, total_steps: int, params, values: dict):
    """The members' optimizer states ``[M, ...]`` from their parameters ``[M, ...]`` and values ``{key: [M]}``.

    Built under the same vmap as the step, so the state has the structure the step's
    optimizer (with traced values) expects.
    """

    def one(p, v):
        return member_parts(config, shape, v, total_steps)[1].init(p)

    return jax.vmap(one)(params, values)


def _gather(data, d: jax.Array, rows):
    """Member batch from data set ``d``: ``(x, y)`` or, with padding, ``(x, y, weights)``."""
    x, y = data
    if isinstance(rows, tuple):
        rows, weights = rows
        return x[d, rows], y[d, rows], weights
    return x[d, rows], y[d, rows]


def select(keep_new: jax.Array, new: TrainState, old: TrainState) -> TrainState:
    """``new`` where ``keep_new`` (one member's ``[]`` bool, or ``[M]`` for the population), else ``old``."""

    def pick(n, o):
        mask = jnp.reshape(keep_new, keep_new.shape + (1,) * (n.ndim - keep_new.ndim))
        return jnp.where(mask, n, o)

    fields = (new.step, new.params, new.model_state, new.opt_state)
    olds = (old.step, old.params, old.model_state, old.opt_state)
    step, params, model_state, opt_state = jax.tree.map(pick, fields, olds)
    return TrainState(step, params, model_state, opt_state, new.key)


def make_population_step(config: cfg.Config, shape: NetShape, total_steps: int, placement=None) -> Callable:
    """The jitted ``step(ts, rows, values, active, data_index, data) -> (ts, metrics)``.

    Args (of the returned step):
      ts: the population's ``TrainState`` (donated).
      rows: ``[M, B]`` int32 rows (``[M, K, B]`` fused), or ``(rows, weights)`` with padding.
      values: ``{dotted.key: [M] float32}``, each member's grid values.
      active: ``[M]`` bool; a member that stopped early keeps its state unchanged.
      data_index: ``[M]`` int32, the data set each member trains on.
      data: ``(x [D, N, ...], y [D, N, ...])`` on the device (not donated, not batched).

    Returns ``metrics`` as in :func:`fntrain.step.make_step`, each ``[M]`` (``[M, K]`` fused).
    With a :class:`~fntrain.population.placement.MemberPlacement`, everything but ``data`` is
    split over its devices along the member axis (``data`` is replicated).
    """
    lc, oc = config.loop, config.optimizer
    grad_norm_every = config.log.every_steps if config.log.grad_norm else None

    def member_step(ts, rows, values, active, d, data):
        loss_fn, optimizer = member_parts(config, shape, values, total_steps)
        step = make_step(loss_fn, optimizer, grad_norm_every_steps=grad_norm_every, accumulate_steps=oc.accumulate_steps)
        if lc.on_nonfinite == "skip":
            step = skipping_nonfinite(step)
        if lc.fixed_dispatch_size > 1:
            step = fused(step)
        new, metrics = step(ts, _gather(data, d, rows))
        return select(active, new, ts), metrics

    vmapped = jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, None))
    if placement is None:
        return jax.jit(vmapped, donate_argnums=(0,))
    member = placement.member
    return jax.jit(
        vmapped, in_shardings=(member, member, member, member, member, placement.replicated),
        out_shardings=(member, member), donate_argnums=(0,),
    )


def make_population_eval_step(config: cfg.Config, shape: NetShape, placement=None) -> Callable:
    """The jitted ``eval_step(ts, batch, values) -> {name: Stats [M]}`` (``loss`` included),
    batch leaves ``[M, B, ...]``, in evaluation mode (``key=None``); split over the member
    axis with a ``placement``."""

    def member_eval(ts: TrainState, batch, values) -> dict[str, Any]:
        loss_fn = member_loss_fn(config, shape, values)
        loss, (_, metrics) = loss_fn(ts.params, ts.model_state, batch, None)
        count = _example_count(batch)
        return {k: _as_stats(v, count) for k, v in {**metrics, "loss": loss}.items()}

    if placement is None:
        return jax.jit(jax.vmap(member_eval))
    member = placement.member
    return jax.jit(jax.vmap(member_eval), in_shardings=(member, member, member), out_shardings=member)
