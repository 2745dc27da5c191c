"""Populations: many seeds and hyperparameters trained at once, in one compiled step.

A config with a ``population`` section (``fntrain.config.population``) trains every member
with ``jax.vmap`` over a ``TrainState`` whose leaves carry a member axis ``[M]``; member
``i`` reproduces the single run ``seed=<its seed> <its grid values>``.

Modules:
  members: the members, their configs, and their grid values as traced data.
  step: the vmapped train and eval steps.
  setup: members' data, keys and the stacked initial state.
  evaluation: every member's metrics over its own split.
  window: per-member training metrics between log lines.
  loop: the outer loop (``train_population``), called by ``fntrain.train``.
  outputs: callbacks, per-member parameters and the finish.
  summary: ranking and mean/std over seeds for ``summary.json``.
"""

from fntrain.population.members import Member, expand, with_values

__all__ = ["Member", "expand", "train_population", "with_values"]


def train_population(*args, **kwargs):
    """:func:`fntrain.population.loop.train_population` (imported on first use)."""
    from fntrain.population.loop import train_population as train

    return train(*args, **kwargs)
