"""The ``optimizer`` section and its ``schedule``: one class per optax recipe.

Every optimizer takes ``learning_rate``, ``weight_decay``, ``clip_grad_norm`` and
``schedule``, plus only its own hyperparameters (named as in optax); every schedule
starts from ``optimizer.learning_rate`` and takes only its own keys.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional

import jax
import optax
from pydantic import Field, Strict, model_validator

from fntrain.config.base import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, _Section, _union
from fntrain.errors import ConfigError

Decay = Annotated[float, Strict(), Field(ge=0, lt=1)]

# --------------------------------------------------------------------------- schedules


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
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, self.warmup_steps, decay_steps, self.end_value)


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


SCHEDULE_VARIANTS = {
    "constant": ConstantSchedule,
    "cosine": CosineSchedule,
    "warmup_cosine": WarmupCosineSchedule,
    "linear": LinearSchedule,
    "piecewise": PiecewiseSchedule,
    "exponential": ExponentialSchedule,
}
ScheduleConfig = _union("schedule", SCHEDULE_VARIANTS, default="constant")

# --------------------------------------------------------------------------- optimizers


def _decay_mask(params):
    # Decay matrices and kernels; biases, norm scales and offsets are left alone.
    return jax.tree.map(lambda p: p.ndim > 1, params)


class _Optimizer(_Section):
    learning_rate: PositiveFloat = Field(1e-3, description="Peak learning rate.")
    weight_decay: NonNegativeFloat = Field(
        0.0,
        description="Weight decay of matrices and kernels (not biases or norm scales): decoupled for adamw, "
        "added to the gradient for sgd, momentum, nesterov and rmsprop; adam takes none (use adamw).",
    )
    clip_grad_norm: Optional[PositiveFloat] = Field(None, description="Clip gradients to this global norm; null: no clipping.")
    schedule: ScheduleConfig = Field(ConstantSchedule(name="constant"), description="Learning-rate schedule.")

    decoupled_weight_decay: ClassVar[bool] = False  # True: the optax recipe applies weight_decay itself

    def _recipe(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        raise NotImplementedError

    def build(self, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """The optax optimizer (with clipping and weight decay) and its learning-rate schedule.

        Args:
          total_steps: the run's length, which schedules without ``decay_steps`` decay over.
        """
        schedule = self.schedule.build(self.learning_rate, total_steps)
        parts = []
        if self.clip_grad_norm is not None:
            parts.append(optax.clip_by_global_norm(self.clip_grad_norm))
        if self.weight_decay and not self.decoupled_weight_decay:
            parts.append(optax.add_decayed_weights(self.weight_decay, mask=_decay_mask))
        return optax.chain(*parts, self._recipe(schedule)), schedule


class SgdOptimizer(_Optimizer):
    name: Literal["sgd"] = Field(description="Plain stochastic gradient descent (`optax.sgd`).")

    def _recipe(self, schedule):
        return optax.sgd(schedule)


class MomentumOptimizer(_Optimizer):
    name: Literal["momentum"] = Field(description="SGD with heavy-ball momentum (`optax.sgd(momentum=...)`).")
    momentum: Decay = Field(0.9, description="Momentum (decay of the velocity).")

    def _recipe(self, schedule):
        return optax.sgd(schedule, momentum=self.momentum)


class NesterovOptimizer(_Optimizer):
    name: Literal["nesterov"] = Field(description="SGD with Nesterov momentum (`optax.sgd(nesterov=True)`).")
    momentum: Decay = Field(0.9, description="Momentum (decay of the velocity).")

    def _recipe(self, schedule):
        return optax.sgd(schedule, momentum=self.momentum, nesterov=True)


class AdamOptimizer(_Optimizer):
    name: Literal["adam"] = Field(description="Adam (`optax.adam`); for weight decay use adamw.")
    b1: Decay = Field(0.9, description="First-moment decay.")
    b2: Decay = Field(0.999, description="Second-moment decay.")
    eps: PositiveFloat = Field(1e-8, description="Denominator epsilon.")

    @model_validator(mode="after")
    def _adam_has_no_weight_decay(self):
        if self.weight_decay:
            raise ValueError("weight_decay: adam takes none; use name: adamw for decoupled weight decay")
        return self

    def _recipe(self, schedule):
        return optax.adam(schedule, b1=self.b1, b2=self.b2, eps=self.eps)


class AdamwOptimizer(_Optimizer):
    name: Literal["adamw"] = Field(description="Adam with decoupled weight decay (`optax.adamw`).")
    b1: Decay = Field(0.9, description="First-moment decay.")
    b2: Decay = Field(0.999, description="Second-moment decay.")
    eps: PositiveFloat = Field(1e-8, description="Denominator epsilon.")

    decoupled_weight_decay = True

    def _recipe(self, schedule):
        return optax.adamw(
            schedule, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay, mask=_decay_mask
        )


class RmspropOptimizer(_Optimizer):
    name: Literal["rmsprop"] = Field(description="RMSProp (`optax.rmsprop`).")
    decay: Annotated[float, Strict(), Field(gt=0, lt=1)] = Field(0.9, description="Squared-gradient decay.")
    eps: PositiveFloat = Field(1e-8, description="Denominator epsilon.")
    momentum: Optional[Decay] = Field(None, description="Momentum; null: none.")

    def _recipe(self, schedule):
        return optax.rmsprop(schedule, decay=self.decay, eps=self.eps, momentum=self.momentum)


OPTIMIZER_VARIANTS = {
    "sgd": SgdOptimizer,
    "momentum": MomentumOptimizer,
    "nesterov": NesterovOptimizer,
    "adam": AdamOptimizer,
    "adamw": AdamwOptimizer,
    "rmsprop": RmspropOptimizer,
}
OptimizerConfig = _union("optimizer", OPTIMIZER_VARIANTS, default="adam")
