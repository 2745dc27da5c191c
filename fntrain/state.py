"""``TrainState``: everything that changes during training, as one pytree of arrays."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
    """The training state; pure data, no functions, so it jits, shards and checkpoints as-is.

    Attributes:
      step: ``[] int32``, the number of updates applied so far.
      params: the network's parameters (nested dict of arrays).
      model_state: the network's non-trained state (batch-norm statistics), ``{}`` if none.
      opt_state: the optax optimizer's state.
      key: a PRNG key; step ``t`` draws its randomness from ``fold_in(key, t)``, so the
        key never changes and a resumed run draws exactly what an uninterrupted one would.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array

    @classmethod
    def create(
        cls, params, model_state, optimizer: optax.GradientTransformation, *, key: jax.Array
    ) -> "TrainState":
        """The state before the first step.

        Example:
          >>> params, state = net.init(jax.random.key(0), x[:1])
          >>> ts = TrainState.create(params, state, optax.adam(1e-3), key=jax.random.key(1))
        """
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=optimizer.init(params),
            key=key,
        )
