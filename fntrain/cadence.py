"""When the loop logs, evaluates, checkpoints and ends: the one place that arithmetic lives.

Everything here is a pure function of the step count, so it is the same in an
uninterrupted run and a resumed one.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from fntrain.errors import ConfigError
from fntrain.limits import MAX_COUNT


class Events(NamedTuple):
    """What happens after a step (each a bool)."""

    log: bool = False
    eval: bool = False
    checkpoint: bool = False
    epoch_end: bool = False
    end: bool = False

    def __bool__(self) -> bool:
        return any(self)


class Cadence(NamedTuple):
    """The loop's schedule of events, in steps.

    Attributes:
      total_steps: steps in the run.
      steps_per_epoch: batches in one pass over the training split.
      log_every: a training log line every N steps (and at the end).
      eval_every_steps: evaluate every N steps; None: not by steps.
      eval_every_epochs: evaluate every N epochs (epoch-based runs); None: not by epochs.
      checkpoint_every: checkpoint every N steps; None: only at the end (and on stops).
      by_epoch: the run is measured in epochs, so an epoch's end is an event.
    """

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every_steps: Optional[int] = None
    eval_every_epochs: Optional[int] = None
    checkpoint_every: Optional[int] = None
    by_epoch: bool = True

    @classmethod
    def from_config(cls, config, steps_per_epoch: int) -> "Cadence":
        loop = config.loop
        by_epoch = loop.kind == "epochs"
        total = loop.num_epochs * steps_per_epoch if by_epoch else loop.num_steps
        if total > MAX_COUNT:  # the step counter is an int32
            raise ConfigError(
                f"loop.num_epochs: {loop.num_epochs} epochs of {steps_per_epoch} steps are {total} steps, more than "
                f"{MAX_COUNT} (the step counter is an int32); lower loop.num_epochs"
            )
        return cls(
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            log_every=config.log.every_steps,
            eval_every_steps=loop.eval_every_steps,
            eval_every_epochs=loop.eval_every_epochs if by_epoch else None,
            checkpoint_every=config.checkpoint.every_steps,
            by_epoch=by_epoch,
        )

    def events(self, step: int) -> Events:
        """The events after ``step`` steps are done (``0 < step <= total_steps``)."""
        end = step == self.total_steps
        epoch_end = self.by_epoch and step % self.steps_per_epoch == 0
        by_epochs = epoch_end and self.eval_every_epochs and (step // self.steps_per_epoch) % self.eval_every_epochs == 0
        return Events(
            log=end or step % self.log_every == 0,
            eval=end or bool(self.eval_every_steps and step % self.eval_every_steps == 0) or bool(by_epochs),
            checkpoint=end or bool(self.checkpoint_every and step % self.checkpoint_every == 0),
            epoch_end=epoch_end,
            end=end,
        )

    def steps_to_event(self, step: int, limit: int) -> int:
        """How many steps a dispatch starting after ``step`` may fuse: up to ``limit``, and
        never past the next step with an event (at least 1)."""
        count = 1
        while count < limit and not self.events(step + count):
            count += 1
        return count

    def epoch(self, step: int) -> float:
        """Epochs done after ``step`` steps (fractional)."""
        return step / self.steps_per_epoch


class CheckpointTimer:
    """``checkpoint.every_minutes``: a checkpoint once that long has passed since the last one.

    The one decision of the loop that is not a function of the step count, and it changes
    no result: a checkpoint is only written after a dispatch, and writing one reads the
    state without touching it, so a run resumed from a timed checkpoint continues exactly
    as the uninterrupted run would (the dispatches after it are the same, see
    :func:`fntrain.dispatch.dispatches`).

    Args:
      every_minutes: the interval; None: never.
      clock: seconds, monotonic (``time.monotonic``; a test passes its own).
    """

    def __init__(self, every_minutes: Optional[float], clock=None):
        import time

        self.interval = None if every_minutes is None else 60.0 * every_minutes
        self.clock = clock or time.monotonic
        self.last = self.clock()

    def due(self) -> bool:
        return self.interval is not None and self.clock() - self.last >= self.interval

    def reset(self) -> None:
        """Called after every checkpoint, timed or not."""
        self.last = self.clock()
