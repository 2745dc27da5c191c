"""The jitted train and eval steps, and the ``loss_fn`` protocol they share.

A ``loss_fn`` has the signature::

    loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics))

``key`` is a PRNG key in training and ``None`` in evaluation, which is how a
network learns whether it is training (dropout on, batch statistics used).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fntrain import losses as losses_lib
from fntrain import metrics as metrics_lib
from fntrain.nn.core import Module
from fntrain.state import TrainState

LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict]]]
MetricFn = Callable[[jax.Array, jax.Array], jax.Array]


def _default_metrics(loss: Callable) -> dict[str, MetricFn]:
    base = getattr(loss, "func", loss)  # see through functools.partial
    if base is losses_lib.softmax_cross_entropy:
        return {"accuracy": metrics_lib.accuracy}
    if base is losses_lib.sigmoid_binary_cross_entropy:
        return {"accuracy": metrics_lib.binary_accuracy}
    return {}


def supervised_loss(
    net: Module, loss: Callable, *, metric_fns: Optional[Mapping[str, MetricFn]] = None
) -> LossFn:
    """Turns a network and a loss into a ``loss_fn`` over ``(inputs, targets)`` batches.

    Args:
      net: the network; ``net.apply`` runs with ``train=key is not None``.
      loss: ``loss(outputs, targets) -> scalar``, e.g. ``fntrain.losses.softmax_cross_entropy``.
      metric_fns: extra metrics ``{name: fn(outputs, targets)}``; by default accuracy for
        the classification losses and nothing for the others.

    Returns:
      ``loss_fn(params, model_state, (x, y), key) -> (loss, (new_model_state, metrics))``.
    """
    metric_fns = dict(_default_metrics(loss) if metric_fns is None else metric_fns)

    def loss_fn(params, model_state, batch, key):
        x, y = batch
        outputs, model_state = net.apply(params, model_state, x, train=key is not None, key=key)
        value = loss(outputs, y)
        return value, (model_state, {name: fn(outputs, y) for name, fn in metric_fns.items()})

    return loss_fn


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    steps_per_dispatch: int = 1,
    grad_norm_every_steps: Optional[int] = None,
    donate: bool = True,
    skip_nonfinite: bool = False,
    state_sharding: Any = None,
    batch_sharding: Any = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Returns a jitted ``step(train_state, batch) -> (train_state, metrics)``.

    Each update draws ``key = fold_in(train_state.key, train_state.step)``,
    computes ``loss, grads = value_and_grad(loss_fn)``, and applies the optax update.
    ``metrics`` holds the ``loss_fn``'s metrics plus ``loss`` and ``nonfinite`` (1 if the
    loss, or a gradient whose norm was computed, was NaN or infinite, else 0), as scalars,
    and ``grad_norm`` when asked for. The flag stays on the device, so checking it costs
    no host sync until the caller reads it. A non-finite gradient makes the next loss
    non-finite, so checking the loss alone still catches it one step later.

    Args:
      loss_fn: see the module docstring.
      optimizer: an optax transformation; it must be the one ``train_state.opt_state`` came from.
      steps_per_dispatch: ``K > 1`` fuses K updates into one ``lax.scan``: every batch leaf
        then has a leading axis of K and every metric comes back stacked as ``[K]``.
      grad_norm_every_steps: ``n``: add ``grad_norm``, the global L2 norm of the gradients,
        on every n-th update (where the new ``step % n == 0``) and NaN on the others; None:
        no ``grad_norm``. The norm is one more pass over every gradient that XLA:CPU does
        not fuse (about 6% of a small MLP's step), hence the choice; the loop asks for it
        at its log steps when ``log.grad_norm`` is on. ``skip_nonfinite`` computes it on every update.
      donate: donate the old state's buffers to the new one (the input state is then
        invalid; keep using the returned one).
      skip_nonfinite: leave params, model state and optimizer state unchanged on a step
        whose loss or gradients are not finite (the step counter still advances).
      state_sharding: shardings of the ``TrainState`` (a matching pytree or prefix); the new
        state keeps them. None: wherever the inputs are.
      batch_sharding: sharding of the batch leaves (with the ``[K]`` axis when fused).
        When shardings are given, metrics come back replicated.

    Example:
      >>> step = make_train_step(supervised_loss(net, losses.softmax_cross_entropy), opt)
      >>> ts, metrics = step(ts, (x, y))
    """
    if not isinstance(steps_per_dispatch, int) or steps_per_dispatch < 1:
        raise ValueError(f"steps_per_dispatch must be a positive int, got {steps_per_dispatch!r}")
    if grad_norm_every_steps is not None and (not isinstance(grad_norm_every_steps, int) or grad_norm_every_steps < 1):
        raise ValueError(f"grad_norm_every_steps must be a positive int or None, got {grad_norm_every_steps!r}")
    norm_every = 1 if skip_nonfinite else grad_norm_every_steps

    def one_step(ts: TrainState, batch) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(ts.key, ts.step)
        (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            ts.params, ts.model_state, batch, key
        )
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        step = ts.step + 1
        metrics = {**metrics, "loss": loss}
        finite = jnp.isfinite(loss)
        if norm_every is not None:
            grad_norm, grads_finite = _grad_norm_every(grads, step, norm_every)
            finite &= grads_finite
            metrics["grad_norm"] = grad_norm
        new = (params, model_state, opt_state)
        if skip_nonfinite:
            old = (ts.params, ts.model_state, ts.opt_state)
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        metrics["nonfinite"] = (~finite).astype(jnp.int32)
        params, model_state, opt_state = new
        return ts._replace(step=step, params=params, model_state=model_state, opt_state=opt_state), metrics

    if steps_per_dispatch == 1:
        step = one_step
    else:

        def step(ts, batches):
            # The length comes from the batch, so the loop may dispatch shorter runs
            # up to a log or eval boundary (each length compiles once).
            return lax.scan(one_step, ts, batches)

    donate_argnums = (0,) if donate else ()
    if state_sharding is None and batch_sharding is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    replicated = _replicated_like(state_sharding, batch_sharding)
    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=donate_argnums,
    )


def _grad_norm_every(grads, step: jax.Array, every: int) -> tuple[jax.Array, jax.Array]:
    """``(global L2 norm, whether it is finite)`` where ``step % every == 0``, else ``(NaN, True)``."""

    def norm(g):
        value = optax.tree.norm(g)
        return value, jnp.isfinite(value)

    if every == 1:
        return norm(grads)
    skipped = jax.tree.map(lambda a: jnp.full(a.shape, jnp.nan, a.dtype), jax.eval_shape(norm, grads)[0])
    # lax.cond runs one branch, so the other steps skip the pass over the gradients.
    return lax.cond(step % every == 0, norm, lambda g: (skipped, jnp.array(True)), grads)


def _replicated_like(*shardings):
    sharding = next(s for s in jax.tree.leaves(shardings) if s is not None)
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())


def make_eval_step(loss_fn: LossFn, *, metrics_sharding: Any = None) -> Callable[[TrainState, Any], dict]:
    """Returns a jitted ``eval_step(train_state, batch) -> metrics`` (``loss`` included).

    The ``loss_fn`` runs with ``key=None`` (evaluation mode) and its new model state
    is discarded, so evaluation never changes running statistics. The inputs keep
    the shardings they have; ``metrics_sharding`` (e.g. replicated) places the outputs.
    """

    def eval_step(ts: TrainState, batch) -> dict:
        loss, (_, metrics) = loss_fn(ts.params, ts.model_state, batch, None)
        return {**metrics, "loss": loss}

    return jax.jit(eval_step, out_shardings=metrics_sharding)
