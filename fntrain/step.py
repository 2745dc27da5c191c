"""The train and eval steps, and the ``loss_fn`` protocol they share.

A ``loss_fn`` has the signature::

    loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics))

``key`` is a PRNG key in training and ``None`` in evaluation, which is how a
network learns whether it is training (dropout on, batch statistics used).
``metrics`` maps names to scalars (means over the batch) or to
:class:`fntrain.metrics.Stats` (sums that stay exact over a whole split).

A train step is built in the optax style, from a plain step and small wrappers that
each add one thing, then jitted once::

    step = make_step(loss_fn, optimizer)      # (ts, batch) -> (ts, metrics), not jitted
                                              # (accumulate_steps=N: N microbatches, one update)
    step = skipping_nonfinite(step)           # optional: non-finite updates are skipped
    step = fused(step)                        # optional: K steps in one lax.scan
    step = jit_step(step, state_sharding=..., batch_sharding=...)

:func:`make_train_step` does exactly this from keyword arguments.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fntrain import losses as losses_lib
from fntrain import metrics as metrics_lib
from fntrain.nn.core import Module
from fntrain.state import TrainState

LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict]]]
Step = Callable[[TrainState, Any], tuple[TrainState, dict]]
MetricLike = Union[Callable[[jax.Array, jax.Array], jax.Array], metrics_lib.Metric]


def _default_metrics(loss: Callable) -> dict[str, metrics_lib.Metric]:
    base = getattr(loss, "func", loss)  # see through functools.partial
    if base is losses_lib.softmax_cross_entropy:
        return {"accuracy": metrics_lib.METRICS["accuracy"]}
    if base is losses_lib.sigmoid_binary_cross_entropy:
        return {"accuracy": metrics_lib.METRICS["binary_accuracy"]}
    return {}


def supervised_loss(
    net: Module,
    loss: Callable,
    *,
    metric_fns: Optional[Mapping[str, MetricLike]] = None,
) -> LossFn:
    """Turns a network and a loss into a ``loss_fn`` over ``(inputs, targets)`` batches.

    A batch may also be ``(inputs, targets, weights)`` with ``weights: [N]`` (0 for padding
    rows); the loss is then called with ``weights=`` and the metrics weight the examples.

    Args:
      net: the network; ``net.apply`` runs with ``train=key is not None``.
      loss: ``loss(outputs, targets) -> scalar``, e.g. ``fntrain.losses.softmax_cross_entropy``
        (it must take ``weights=`` for weighted batches, as every built-in loss does).
      metric_fns: metrics ``{name: metric}``, each a :class:`fntrain.metrics.Metric` (e.g.
        ``fntrain.metrics.METRICS["r2"]``) or a plain ``fn(outputs, targets) -> scalar``;
        None: accuracy for the two classification losses, nothing for the others.

    Returns:
      ``loss_fn(params, model_state, (x, y), key) -> (loss, (new_model_state, metrics))``,
      ``metrics`` as :class:`fntrain.metrics.Stats` (``fntrain.metrics.value`` gives the
      batch value; the train step and evaluation do that for you).
    """
    metric_fns = _default_metrics(loss) if metric_fns is None else metric_fns
    metric_list = {name: metrics_lib.as_metric(fn) for name, fn in metric_fns.items()}

    def loss_fn(params, model_state, batch, key):
        x, y, *rest = batch
        weights = rest[0] if rest else None
        outputs, model_state = net.apply(params, model_state, x, train=key is not None, key=key)
        value = loss(outputs, y) if weights is None else loss(outputs, y, weights=weights)
        return value, (model_state, {name: metrics_lib.stats(m, outputs, y, weights) for name, m in metric_list.items()})

    return loss_fn


# --------------------------------------------------------------------------- the plain step


def make_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    grad_norm_every_steps: Optional[int] = None,
    accumulate_steps: int = 1,
) -> Step:
    """The plain train step ``step(train_state, batch) -> (train_state, metrics)``, not jitted.

    Each update draws ``key = fold_in(train_state.key, train_state.step)``, computes
    ``loss, grads = value_and_grad(loss_fn)`` and applies the optax update. ``metrics``
    holds the ``loss_fn``'s metrics (batch values), ``loss``, and ``nonfinite``: 1 if the
    loss (or a gradient norm computed) was NaN or infinite, else 0. A non-finite gradient
    makes the next loss non-finite, so checking the loss alone still catches it one step later.

    Args:
      grad_norm_every_steps: ``n``: add ``grad_norm``, the global L2 norm of the gradients,
        on every n-th update (where the new ``step % n == 0``) and NaN on the others. The
        norm is one more pass over every gradient that XLA:CPU does not fuse (about 6% of a
        small MLP's step), hence the choice.
      accumulate_steps: ``N > 1`` splits each batch into N microbatches and applies one
        update with their accumulated gradients (:func:`accumulated_value_and_grad`).
    """
    if grad_norm_every_steps is not None and (not isinstance(grad_norm_every_steps, int) or grad_norm_every_steps < 1):
        raise ValueError(f"grad_norm_every_steps must be a positive int or None, got {grad_norm_every_steps!r}")
    value_and_grad = accumulated_value_and_grad(loss_fn, accumulate_steps)

    def step(ts: TrainState, batch) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(ts.key, ts.step)
        (loss, (model_state, metrics)), grads = value_and_grad(ts.params, ts.model_state, batch, key)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        new_step = ts.step + 1
        metrics = {**{k: metrics_lib.value(v) for k, v in metrics.items()}, "loss": loss}
        finite = jnp.isfinite(loss)
        if grad_norm_every_steps is not None:
            metrics["grad_norm"], grads_finite = _grad_norm_every(grads, new_step, grad_norm_every_steps)
            finite &= grads_finite
        metrics["nonfinite"] = (~finite).astype(jnp.int32)
        return TrainState(new_step, params, model_state, opt_state, ts.key), metrics

    return step


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


# --------------------------------------------------------------------------- accumulation


def microbatches(batch, num_microbatches: int):
    """Every leaf ``[B, ...]`` of ``batch`` as ``[N, B / N, ...]``; microbatch ``j`` holds rows
    ``j, j + N, j + 2N, ...``.

    The rows are strided rather than contiguous so that the split stays on each device: on
    a data-parallel mesh device ``d`` holds a contiguous block of ``B / D`` rows, and as long
    as ``N`` divides ``B / D`` every microbatch takes ``B / (N D)`` rows of every block. The
    reshape ``[B] -> [B / N, N]`` keeps the sharded axis first, and the transpose to
    ``[N, B / N]`` moves no data between devices.
    """

    def split(a):
        if a.shape[0] % num_microbatches:
            raise ValueError(
                f"accumulate_steps={num_microbatches} must divide the batch's {a.shape[0]} rows "
                f"(a leaf of shape {tuple(a.shape)}); choose a batch size that it divides"
            )
        return jnp.swapaxes(a.reshape(a.shape[0] // num_microbatches, num_microbatches, *a.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _microbatch_fractions(micro) -> jax.Array:
    """``[N]``: each microbatch's share of the batch, ``W_j / W`` with weights, else ``1 / N``."""
    if isinstance(micro, tuple) and len(micro) == 3:  # (x, y, weights): weight-0 rows are padding
        totals = jnp.sum(micro[2].reshape(micro[2].shape[0], -1), axis=1).astype(jnp.float32)
        return totals / jnp.maximum(jnp.sum(totals), 1e-30)
    n = jax.tree.leaves(micro)[0].shape[0]
    return jnp.full((n,), 1.0 / n, jnp.float32)


def _combine_metric(values, fractions: jax.Array):
    """A metric over the whole batch from its ``[N]`` per-microbatch values: Stats sums add up,
    plain scalars (means over their microbatch) are averaged with the microbatches' shares."""
    if isinstance(values, metrics_lib.Stats):
        return jax.tree.map(lambda a: jnp.sum(a, axis=0), values)
    return jnp.sum(fractions.astype(values.dtype) * values)


def accumulated_value_and_grad(loss_fn: LossFn, num_microbatches: int = 1) -> Callable:
    """``jax.value_and_grad(loss_fn, has_aux=True)``, over ``N`` microbatches of each batch.

    ``fn(params, model_state, batch, key) -> ((loss, (model_state, metrics)), grads)``. With
    ``N > 1`` the batch is split by :func:`microbatches` and a ``lax.scan`` runs the forward and
    backward pass of one microbatch at a time, so activations take the memory of ``B / N``
    rows, and adds up ``grads = sum_j (W_j / W) grad_j`` (``W_j``: microbatch ``j``'s total
    weight, ``B / N`` without weights). Each microbatch's loss is the (weighted) mean over its
    rows, so ``loss`` and ``grads`` equal the full batch's up to float summation order, padding
    rows included. Microbatch ``j`` draws its randomness from ``fold_in(key, j)``.

    Networks with batch statistics see each microbatch as a batch: batch norm normalises
    with the statistics of ``B / N`` rows and updates its running averages once per
    microbatch, in order; the model state after the last microbatch is kept.

    Metrics: :class:`fntrain.metrics.Stats` sums add up over the microbatches, and plain
    scalars are averaged with the weights ``W_j / W``.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if not isinstance(num_microbatches, int) or num_microbatches < 1:
        raise ValueError(f"accumulate_steps must be a positive int, got {num_microbatches!r}")
    if num_microbatches == 1:
        return grad_fn

    def value_and_grad(params, model_state, batch, key):
        micro = microbatches(batch, num_microbatches)
        fractions = _microbatch_fractions(micro)

        def one(carry, xs):
            model_state, grads = carry
            j, mb, fraction = xs
            mb_key = None if key is None else jax.random.fold_in(key, j)
            (loss, (model_state, metrics)), g = grad_fn(params, model_state, mb, mb_key)
            grads = jax.tree.map(lambda total, gj: total + fraction.astype(gj.dtype) * gj, grads, g)
            return (model_state, grads), (loss, metrics)

        zeros = jax.tree.map(jnp.zeros_like, params)
        xs = (jnp.arange(num_microbatches), micro, fractions)
        (model_state, grads), (losses, metrics) = lax.scan(one, (model_state, zeros), xs)
        loss = jnp.sum(fractions.astype(losses.dtype) * losses)
        metrics = {k: _combine_metric(v, fractions) for k, v in metrics.items()}
        return (loss, (model_state, metrics)), grads

    return value_and_grad


# --------------------------------------------------------------------------- wrappers


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def skipping_nonfinite(step: Step) -> Step:
    """``step`` that leaves params, model state and optimizer state unchanged where the loss
    or the new state is not finite (the step counter still advances; ``nonfinite`` says so).

    Checking the new state catches a NaN or infinite gradient in the same update: every
    optax optimizer turns one into non-finite parameters or moments.
    """

    def skipping(ts: TrainState, batch) -> tuple[TrainState, dict]:
        new, metrics = step(ts, batch)
        finite = (metrics["nonfinite"] == 0) & _all_finite((new.params, new.model_state, new.opt_state))
        kept = jax.tree.map(
            lambda n, o: jnp.where(finite, n, o),
            (new.params, new.model_state, new.opt_state),
            (ts.params, ts.model_state, ts.opt_state),
        )
        return new._replace(params=kept[0], model_state=kept[1], opt_state=kept[2]), {
            **metrics,
            "nonfinite": (~finite).astype(jnp.int32),
        }

    return skipping


def fused(step: Step) -> Step:
    """``step`` over ``K`` batches in one ``lax.scan``: every batch leaf gains a leading
    ``[K]`` axis and every metric comes back as ``[K]``; the results equal K single steps.

    The length comes from the batch, so callers may dispatch shorter runs up to an event
    (each length compiles once).
    """

    def steps(ts: TrainState, batches) -> tuple[TrainState, dict]:
        return lax.scan(step, ts, batches)

    return steps


def on_rows(step: Step) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
    """``step`` on the rows ``[B]`` (or ``[K, B]`` fused) of data already on the device:
    ``new(ts, rows, data) = step(ts, tree.map(lambda a: a[rows], data))``. A step then costs a
    transfer of row indices rather than of the batch. ``rows`` may also be ``(rows, weights)``,
    which gives the step ``(*data[rows], weights)``."""

    def gathered(ts: TrainState, rows, data) -> tuple[TrainState, dict]:
        if isinstance(rows, tuple):
            rows, weights = rows
            return step(ts, (*jax.tree.map(lambda a: a[rows], tuple(data)), weights))
        return step(ts, jax.tree.map(lambda a: a[rows], data))

    return gathered


def jit_step(
    step: Callable, *, donate: bool = True, state_sharding: Any = None, batch_sharding: Any = None, extra_shardings: Sequence = ()
) -> Callable:
    """``jax.jit(step)``, donating the state; with shardings, metrics come back replicated.

    Args:
      donate: donate the old state's buffers to the new one (the input state is then
        invalid; keep using the returned one).
      state_sharding: shardings of the ``TrainState`` (a matching pytree or prefix); the new
        state keeps them. None: wherever the inputs are.
      batch_sharding: sharding of the batch leaves (with the ``[K]`` axis when fused).
      extra_shardings: shardings of any further arguments (e.g. :func:`on_rows`'s data).
    """
    donate_argnums = (0,) if donate else ()
    if state_sharding is None and batch_sharding is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    replicated = _replicated_like(state_sharding, batch_sharding)
    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding, *extra_shardings),
        out_shardings=(state_sharding, replicated),
        donate_argnums=donate_argnums,
    )


def _replicated_like(*shardings):
    sharding = next(s for s in jax.tree.leaves(shardings) if s is not None)
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())


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
    accumulate_steps: int = 1,
) -> Step:
    """Returns a jitted ``step(train_state, batch) -> (train_state, metrics)``.

    :func:`make_step`, wrapped in :func:`skipping_nonfinite` and :func:`fused` as asked,
    then :func:`jit_step`. The flag ``metrics["nonfinite"]`` stays on the device, so
    checking it costs no host sync until the caller reads it.

    Args:
      loss_fn: see the module docstring.
      optimizer: an optax transformation; it must be the one ``train_state.opt_state`` came from.
      steps_per_dispatch: ``K > 1`` fuses K updates into one ``lax.scan`` (:func:`fused`).
      grad_norm_every_steps, accumulate_steps: see :func:`make_step`.
      donate, state_sharding, batch_sharding: see :func:`jit_step`.
      skip_nonfinite: see :func:`skipping_nonfinite`.

    Example:
      >>> step = make_train_step(supervised_loss(net, losses.softmax_cross_entropy), opt)
      >>> ts, metrics = step(ts, (x, y))
    """
    if not isinstance(steps_per_dispatch, int) or steps_per_dispatch < 1:
        raise ValueError(f"steps_per_dispatch must be a positive int, got {steps_per_dispatch!r}")
    step = make_step(loss_fn, optimizer, grad_norm_every_steps=grad_norm_every_steps, accumulate_steps=accumulate_steps)
    if skip_nonfinite:
        step = skipping_nonfinite(step)
    if steps_per_dispatch > 1:
        step = fused(step)
    return jit_step(step, donate=donate, state_sharding=state_sharding, batch_sharding=batch_sharding)


def make_eval_step(loss_fn: LossFn, *, metrics_sharding: Any = None) -> Callable[[TrainState, Any], dict]:
    """Returns a jitted ``eval_step(train_state, batch) -> metrics`` (``loss`` included),
    each metric its value on the batch.

    The ``loss_fn`` runs with ``key=None`` (evaluation mode) and its new model state
    is discarded, so evaluation never changes running statistics. The inputs keep
    the shardings they have; ``metrics_sharding`` (e.g. replicated) places the outputs.
    For metrics exact over a whole split, see :func:`fntrain.evaluate`.
    """

    def eval_step(ts: TrainState, batch) -> dict:
        loss, (_, metrics) = loss_fn(ts.params, ts.model_state, batch, None)
        return {**{k: metrics_lib.value(v) for k, v in metrics.items()}, "loss": loss}

    return jax.jit(eval_step, out_shardings=metrics_sharding)
