"""The ``optimizer.schedule`` section: one class per optax schedule, each building its own.

Every schedule starts from ``optimizer.learning_rate`` and takes only its own keys; the ones
that decay span the run (``total_steps``) unless given ``decay_steps``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import jax
import optax
from pydantic import Field, Strict, model_validator

from fntrain.config.base import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, _Section, _union
from fntrain.errors import ConfigError
from fntrain.hyperparams import is_concrete


class _Schedule(_Section):
    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        """The learning rate as a function of the step; decays span ``total_steps`` unless set."""
        raise NotImplementedError


class ConstantSchedule(_Schedule):
    name: Literal["constant"] = Field(description="`learning_rate` throughout.")

    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        return optax.constant_schedule(learning_rate)


_DECAY_STEPS = "Steps to decay over; null: the whole run."
_END_VALUE = "The final learning rate."


class CosineSchedule(_Schedule):
    name: Literal["cosine"] = Field(description="Cosine decay from `learning_rate` to `end_value`.")
    decay_steps: Optional[PositiveInt] = Field(None, description=_DECAY_STEPS)
    end_value: NonNegativeFloat = Field(0.0, description=_END_VALUE)

    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        decay_steps = self.decay_steps or total_steps
        return optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=self.end_value / learning_rate)


class WarmupCosineSchedule(_Schedule):
    name: Literal["warmup_cosine"] = Field(
        description="Linear warm-up from 0 to `learning_rate`, then cosine decay to `end_value`."
    )
    warmup_steps: NonNegativeInt = Field(0, description="Steps of linear warm-up from 0.")
    decay_steps: Optional[PositiveInt] = Field(None, description="Steps to decay over, warm-up included; null: the whole run.")
    end_value: NonNegativeFloat = Field(0.0, description=_END_VALUE)

    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        decay_steps = self.decay_steps or total_steps
        if self.warmup_steps >= decay_steps:
            raise ConfigError(
                f"optimizer.schedule.warmup_steps ({self.warmup_steps}) must be below the decay steps ({decay_steps})"
            )
        if is_concrete(learning_rate):
            return optax.warmup_cosine_decay_schedule(0.0, learning_rate, self.warmup_steps, decay_steps, self.end_value)
        # A population's traced learning rate (positive, so optax's test for a zero peak is moot):
        # the same two schedules optax joins.
        warmup = optax.linear_schedule(0.0, learning_rate, self.warmup_steps)
        cosine = optax.cosine_decay_schedule(learning_rate, decay_steps - self.warmup_steps, alpha=self.end_value / learning_rate)
        return optax.join_schedules([warmup, cosine], [self.warmup_steps])


class LinearSchedule(_Schedule):
    name: Literal["linear"] = Field(description="Linear decay from `learning_rate` to `end_value`.")
    decay_steps: Optional[PositiveInt] = Field(None, description=_DECAY_STEPS)
    end_value: NonNegativeFloat = Field(0.0, description=_END_VALUE)

    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        return optax.linear_schedule(learning_rate, self.end_value, self.decay_steps or total_steps)


class PiecewiseSchedule(_Schedule):
    name: Literal["piecewise"] = Field(description="`learning_rate`, multiplied by each scale at its boundary.")
    boundaries: tuple[PositiveInt, ...] = Field((), description="Steps at which the rate is multiplied (increasing).")
    scales: tuple[PositiveFloat, ...] = Field((), description="The factor at each boundary.")

    @model_validator(mode="after")
    def _piecewise_pairs(self):
        if len(self.boundaries) != len(self.scales):
            raise ValueError(f"scales: {len(self.scales)} given for {len(self.boundaries)} boundaries; they must pair up")
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError("boundaries: must be increasing")
        return self

    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        return optax.piecewise_constant_schedule(learning_rate, dict(zip(self.boundaries, self.scales)))


class ExponentialSchedule(_Schedule):
    name: Literal["exponential"] = Field(
        description="`learning_rate * decay_rate ** (step / transition_steps)`, floored at `end_value`."
    )
    decay_rate: PositiveFloat = Field(0.5, description="Factor per `transition_steps`.")
    transition_steps: PositiveInt = Field(1000, description="Steps per decay by `decay_rate`.")
    end_value: NonNegativeFloat = Field(0.0, description="The floor of the learning rate; 0: none.")

    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        end_value = self.end_value or None
        return optax.exponential_decay(learning_rate, self.transition_steps, self.decay_rate, end_value=end_value)


class WarmupConstantSchedule(_Schedule):
    name: Literal["warmup_constant"] = Field(description="Linear warm-up from 0 to `learning_rate`, then constant.")
    warmup_steps: NonNegativeInt = Field(0, description="Steps of linear warm-up from 0.")

    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        return optax.warmup_constant_schedule(0.0, learning_rate, self.warmup_steps)


def _decay_shape(shape: str, learning_rate: float, end_value: float, steps: int) -> optax.Schedule:
    """From ``learning_rate`` to ``end_value`` over ``steps``: linear, cosine or ``1 - sqrt``."""
    if shape == "linear":
        return optax.linear_schedule(learning_rate, end_value, steps)
    if shape == "cosine":
        return optax.cosine_decay_schedule(learning_rate, steps, alpha=end_value / learning_rate)

    def one_minus_sqrt(count):
        done = jax.numpy.clip(count / steps, 0.0, 1.0)
        return end_value + (learning_rate - end_value) * (1.0 - jax.numpy.sqrt(done))

    return one_minus_sqrt


class WarmupStableDecaySchedule(_Schedule):
    name: Literal["warmup_stable_decay"] = Field(
        description="Warmup-stable-decay (WSD): linear warm-up from 0 to `learning_rate`, constant, then a "
        "decay to `end_value` over the run's last `decay_steps` (or `decay_fraction` of the run)."
    )
    warmup_steps: NonNegativeInt = Field(0, description="Steps of linear warm-up from 0.")
    decay_steps: Optional[PositiveInt] = Field(None, description="Steps of the final decay; null: `decay_fraction` of the run.")
    decay_fraction: Annotated[float, Strict(), Field(gt=0, le=1)] = Field(
        0.2, description="The final decay's share of the run's steps; used where `decay_steps` is null."
    )
    decay_shape: Literal["linear", "cosine", "sqrt"] = Field(
        "linear", description="The decay: linear, cosine, or sqrt (`1 - sqrt(t / decay_steps)`)."
    )
    end_value: NonNegativeFloat = Field(0.0, description=_END_VALUE)

    def build(self, learning_rate: float, total_steps: int) -> optax.Schedule:
        decay_steps = self.decay_steps or max(1, round(self.decay_fraction * total_steps))
        stable_steps = total_steps - self.warmup_steps - decay_steps
        if stable_steps < 0:
            raise ConfigError(
                f"optimizer.schedule: warmup_steps ({self.warmup_steps}) and the decay ({decay_steps} steps) "
                f"do not fit in the run's {total_steps} steps"
            )
        pieces = [
            optax.linear_schedule(0.0, learning_rate, self.warmup_steps),
            optax.constant_schedule(learning_rate),
            _decay_shape(self.decay_shape, learning_rate, self.end_value, decay_steps),
        ]
        return optax.join_schedules(pieces, [self.warmup_steps, self.warmup_steps + stable_steps])


SCHEDULE_VARIANTS = {
    "constant": ConstantSchedule,
    "cosine": CosineSchedule,
    "warmup_cosine": WarmupCosineSchedule,
    "warmup_constant": WarmupConstantSchedule,
    "warmup_stable_decay": WarmupStableDecaySchedule,
    "linear": LinearSchedule,
    "piecewise": PiecewiseSchedule,
    "exponential": ExponentialSchedule,
}
ScheduleConfig = _union("schedule", SCHEDULE_VARIANTS, default="constant")
