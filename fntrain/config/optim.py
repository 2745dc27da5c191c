"""The ``optimizer`` section: one class per optax recipe, and ``optax:NAME`` (schedules: ``schedule.py``).

Every optimizer takes ``learning_rate``, ``weight_decay``, ``clip_grad_norm`` and
``schedule``, plus only its own hyperparameters (named as in optax). The keys every
optimizer shares also add what sits around the recipe: gradient accumulation
(``accumulate_steps``, applied by the train step), parameter groups (``groups``), a
reduce-on-plateau scale (``reduce_on_plateau``) and an EMA of the parameters (``ema_*``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable, ClassVar, Literal, Optional

import jax
import optax
from pydantic import Field, Strict, field_validator, model_validator

from fntrain import optim
from fntrain.config import aliases
from fntrain.config.base import (
    FrozenMapping,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    _freeze_mapping,
    _Section,
    _union,
)
from fntrain.config.schedule import ConstantSchedule, ScheduleConfig
from fntrain.errors import ConfigError
from fntrain.hyperparams import known_zero

Decay = Annotated[float, Strict(), Field(ge=0, lt=1)]

# --------------------------------------------------------------------------- groups and plateau


class ParamGroupConfig(_Section):
    match: str = Field(
        description="A regular expression searched in each parameter's path (`dense_1/w`, as the model summary "
        "prints them; anchor with `^` and `$`). A parameter belongs to the first group that matches, the others "
        "to the optimizer's own settings."
    )
    learning_rate_scale: PositiveFloat = Field(
        1.0, description="This group's learning rate is the schedule's times this factor."
    )
    weight_decay: Optional[NonNegativeFloat] = Field(None, description="This group's weight decay; null: the optimizer's.")
    frozen: bool = Field(False, description="No updates and no optimizer state for this group's parameters.")

    @field_validator("match")
    @classmethod
    def _a_regex(cls, v):
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a regular expression ({e})") from None
        return v

    @model_validator(mode="after")
    def _frozen_takes_nothing_else(self):
        if self.frozen and {"learning_rate_scale", "weight_decay"} & self.model_fields_set:
            raise ValueError("frozen: a frozen group gets no updates; remove its learning_rate_scale and weight_decay")
        return self

    def describe(self) -> str:
        """``frozen``, or what the group changes: ``lr x0.1, weight_decay 0``."""
        if self.frozen:
            return "frozen"
        parts = [f"lr x{self.learning_rate_scale:g}"] if self.learning_rate_scale != 1.0 else []
        if self.weight_decay is not None:
            parts.append(f"weight_decay {self.weight_decay:g}")
        return ", ".join(parts) or "as the optimizer"


class PlateauConfig(_Section):
    metric: str = Field("loss", description="The validation metric watched (of the parameters `ema_eval` picks).")
    mode: Literal["min", "max"] = Field("min", description="Whether smaller or larger `metric` is better.")
    factor: Annotated[float, Strict(), Field(gt=0, lt=1)] = Field(0.1, description="The scale's factor at each plateau.")
    patience: PositiveInt = Field(10, description="Evaluations without improvement before the scale drops.")
    rtol: NonNegativeFloat = Field(1e-4, description="Relative improvement that counts.")
    atol: NonNegativeFloat = Field(0.0, description="Absolute improvement that counts.")
    cooldown: NonNegativeInt = Field(0, description="Evaluations ignored after each drop.")
    min_scale: NonNegativeFloat = Field(0.0, description="The scale never drops below this.")

    @model_validator(mode="after")
    def _some_tolerance(self):
        if self.rtol == 0.0 and self.atol == 0.0:
            raise ValueError("rtol: rtol or atol must be positive (optax.contrib.reduce_on_plateau)")
        if self.rtol > 1.0:
            raise ValueError("rtol: must be at most 1")
        return self

    def observer(self) -> Callable:
        """``observe(opt_state, value) -> opt_state`` (:func:`fntrain.optim.make_plateau_observer`)."""
        keys = ("factor", "patience", "rtol", "atol", "cooldown", "min_scale", "mode")
        return optim.make_plateau_observer(**{k: getattr(self, k) for k in keys})


# --------------------------------------------------------------------------- optimizers


def _decay_mask(params):
    # Decay matrices and kernels; biases, norm scales and offsets are left alone.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _scaled(schedule: optax.Schedule, factor: float) -> optax.Schedule:
    return schedule if factor == 1.0 else (lambda count: factor * schedule(count))


def _masked(tx: optax.GradientTransformation, mask: Optional[Callable]) -> optax.GradientTransformation:
    return tx if mask is None else optax.masked(tx, mask)


class _Optimizer(_Section):
    learning_rate: PositiveFloat = Field(1e-3, description="Peak learning rate.")
    weight_decay: NonNegativeFloat = Field(
        0.0,
        description="Weight decay of matrices and kernels (not biases or norm scales): decoupled for adamw, "
        "added to the gradient for sgd, momentum, nesterov and rmsprop; adam takes none (use adamw). For "
        "`optax:NAME`: passed as its `weight_decay` if it takes one (0 replaces optax's default), else added "
        "to the gradient.",
    )
    clip_grad_norm: Optional[PositiveFloat] = Field(
        None, description="Clip gradients to this global norm (over the parameters that are not frozen); null: no clipping."
    )
    schedule: ScheduleConfig = Field(ConstantSchedule(name="constant"), description="Learning-rate schedule.")
    accumulate_steps: PositiveInt = Field(
        1,
        description="Split each batch into N microbatches inside the one jitted step (a `lax.scan`), add up their "
        "gradients and apply one update: the result of the full batch (up to float rounding) in the memory of "
        "a microbatch. N must divide `data.batch_size` (and its rows per device). Batch norm sees each "
        "microbatch as a batch: statistics of `batch_size / N` rows, running averages updated N times per "
        "step, the state after the last microbatch kept.",
    )
    groups: tuple[ParamGroupConfig, ...] = Field(
        (),
        description="Parameter groups, each `{match: REGEX, learning_rate_scale, weight_decay, frozen}`, through "
        "`optax.multi_transform`; the first group whose `match` is found in a parameter's path takes it. A "
        "frozen group gets `optax.set_to_zero`: no update, no optimizer state. The model summary shows each "
        "layer's group.",
    )
    reduce_on_plateau: Optional[PlateauConfig] = Field(
        None,
        description="Scale the updates down when a validation metric stops improving "
        "(`optax.contrib.reduce_on_plateau`, fed at each evaluation); the scale lives in the optimizer state "
        "and is logged as `lr_scale`. null: off.",
    )
    ema_decay: Optional[Decay] = Field(
        None,
        description="Keep an exponential moving average of the parameters with this decay (e.g. 0.999), in the "
        "optimizer state: `ema <- d * ema + (1 - d) * params` after every update. Evaluation then logs both "
        "(`val` and `val_ema`, `test` and `test_ema`). null: off.",
    )
    ema_warmup: bool = Field(
        False, description="Warm the EMA's decay up as `d_t = min(ema_decay, (1 + t) / (10 + t))` at update t."
    )
    ema_eval: Optional[Literal["raw", "ema"]] = Field(
        None,
        description="Which parameters early stopping, reduce_on_plateau, `params.npz` (so `fntrain eval`) and "
        "`summary.json` use: raw or ema; null: ema when `ema_decay` is set.",
    )

    decoupled_weight_decay: ClassVar[bool] = False  # True: the optax recipe applies weight_decay itself

    @model_validator(mode="after")
    def _ema_keys_need_a_decay(self):
        if self.ema_decay is None and (self.ema_warmup or self.ema_eval == "ema"):
            key = "ema_warmup" if self.ema_warmup else "ema_eval"
            raise ValueError(f"{key}: needs optimizer.ema_decay (e.g. 0.999), which is null")
        return self

    @property
    def eval_params(self) -> str:
        """``"ema"`` or ``"raw"``: the parameters evaluations choose by (see ``ema_eval``)."""
        return "ema" if self.ema_decay is not None and self.ema_eval != "raw" else "raw"

    def _recipe(self, schedule: optax.Schedule, weight_decay: float) -> optax.GradientTransformation:
        raise NotImplementedError

    def _decoupled(self) -> bool:
        return self.decoupled_weight_decay

    def _update(self, schedule: optax.Schedule, weight_decay: float) -> list[optax.GradientTransformation]:
        """Weight decay (unless the recipe applies it) and the recipe."""
        parts = []
        if not known_zero(weight_decay) and not self._decoupled():
            parts.append(optax.add_decayed_weights(weight_decay, mask=_decay_mask))
        return [*parts, self._recipe(schedule, weight_decay)]

    def _grouped(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        """``optax.multi_transform`` over ``groups`` (``"default"``: every other parameter)."""
        transforms = {optim.DEFAULT_GROUP: optax.chain(*self._update(schedule, self.weight_decay))}
        for i, group in enumerate(self.groups):
            if group.frozen:
                transforms[optim.group_label(i)] = optax.set_to_zero()
                continue
            weight_decay = self.weight_decay if group.weight_decay is None else group.weight_decay
            transforms[optim.group_label(i)] = optax.chain(
                *self._update(_scaled(schedule, group.learning_rate_scale), weight_decay)
            )
        return optax.multi_transform(transforms, optim.group_labels([g.match for g in self.groups]))

    def _trainable(self) -> Optional[Callable]:
        """``mask(params)``: True where a parameter is not frozen; None when none is."""
        frozen = {optim.group_label(i) for i, g in enumerate(self.groups) if g.frozen}
        if not frozen:
            return None
        labels = optim.group_labels([g.match for g in self.groups])
        return lambda tree: jax.tree.map(lambda label: label not in frozen, labels(tree))

    def build(self, total_steps: int, params: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """The optax optimizer and its learning-rate schedule (without ``reduce_on_plateau``'s scale).

        ``chain(clip, recipe or multi_transform(groups), plateau_scale, ema)``, each part only
        when configured; clipping and the EMA skip frozen parameters.

        Args:
          total_steps: the run's length, which schedules without ``decay_steps`` decay over.
          params: the model's parameters (or their shapes), to check that every group matches one.

        Raises:
          ConfigError: a group matches no parameter, or a schedule does not fit the run.
        """
        schedule = self.schedule.build(self.learning_rate, total_steps)
        if params is not None:
            self.check_groups(params)
        trainable = self._trainable()
        parts = []
        if self.clip_grad_norm is not None:
            parts.append(_masked(optax.clip_by_global_norm(self.clip_grad_norm), trainable))
        parts += [self._grouped(schedule)] if self.groups else self._update(schedule, self.weight_decay)
        if self.reduce_on_plateau is not None:
            parts.append(optim.plateau_scale())
        if self.ema_decay is not None:
            parts.append(_masked(optim.ema(self.ema_decay, warmup=self.ema_warmup), trainable))
        return optax.chain(*parts), schedule

    def check_groups(self, params) -> None:
        """Every group's ``match`` must take at least one parameter (a typo matches none)."""
        unmatched = optim.unmatched_groups([g.match for g in self.groups], params)
        labels = set(jax.tree.leaves(optim.group_labels([g.match for g in self.groups])(params)))
        for i, group in enumerate(self.groups):
            if i in unmatched or optim.group_label(i) not in labels:
                paths = ", ".join(optim.param_paths(params)[:8])
                why = "matches no parameter path" if i in unmatched else "matches only parameters an earlier group takes"
                raise ConfigError(
                    f"optimizer.groups[{i}].match: {group.match!r} {why} of this model (paths look like {paths}, ...)"
                )

    def group_of(self, path: str) -> str:
        """A parameter's group as the model summary shows it: ``groups[1] frozen``, or ``""`` for none."""
        label = optim.label_for([g.match for g in self.groups], path)
        if label == optim.DEFAULT_GROUP:
            return ""
        i = int(label.removeprefix("group_"))
        return f"groups[{i}] {self.groups[i].describe()}"


class SgdOptimizer(_Optimizer):
    name: Literal["sgd"] = Field(description="Plain stochastic gradient descent (`optax.sgd`).")

    def _recipe(self, schedule, weight_decay):
        return optax.sgd(schedule)


class MomentumOptimizer(_Optimizer):
    name: Literal["momentum"] = Field(description="SGD with heavy-ball momentum (`optax.sgd(momentum=...)`).")
    momentum: Decay = Field(0.9, description="Momentum (decay of the velocity).")

    def _recipe(self, schedule, weight_decay):
        return optax.sgd(schedule, momentum=self.momentum)


class NesterovOptimizer(_Optimizer):
    name: Literal["nesterov"] = Field(description="SGD with Nesterov momentum (`optax.sgd(nesterov=True)`).")
    momentum: Decay = Field(0.9, description="Momentum (decay of the velocity).")

    def _recipe(self, schedule, weight_decay):
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
        decaying = [i for i, g in enumerate(self.groups) if g.weight_decay]
        if decaying:
            raise ValueError(
                f"groups: group {decaying[0]} sets weight_decay, but adam takes none; use name: adamw for decoupled weight decay"
            )
        return self

    def _recipe(self, schedule, weight_decay):
        return optax.adam(schedule, b1=self.b1, b2=self.b2, eps=self.eps)


class AdamwOptimizer(_Optimizer):
    name: Literal["adamw"] = Field(description="Adam with decoupled weight decay (`optax.adamw`).")
    b1: Decay = Field(0.9, description="First-moment decay.")
    b2: Decay = Field(0.999, description="Second-moment decay.")
    eps: PositiveFloat = Field(1e-8, description="Denominator epsilon.")

    decoupled_weight_decay = True

    def _recipe(self, schedule, weight_decay):
        return optax.adamw(schedule, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=weight_decay, mask=_decay_mask)


class RmspropOptimizer(_Optimizer):
    name: Literal["rmsprop"] = Field(description="RMSProp (`optax.rmsprop`).")
    decay: Annotated[float, Strict(), Field(gt=0, lt=1)] = Field(0.9, description="Squared-gradient decay.")
    eps: PositiveFloat = Field(1e-8, description="Denominator epsilon.")
    momentum: Optional[Decay] = Field(None, description="Momentum; null: none.")

    def _recipe(self, schedule, weight_decay):
        return optax.rmsprop(schedule, decay=self.decay, eps=self.eps, momentum=self.momentum)


class OptaxOptimizer(_Optimizer):
    name: str = Field(
        description="Any optax optimizer by name: `optax:lion`, `optax:lamb`, `optax:adafactor`, "
        "`optax:contrib.prodigy`, ... (every function of `optax` and `optax.contrib` whose first parameter is "
        "`learning_rate`). `learning_rate` and the schedule are passed as its `learning_rate`."
    )
    kwargs: Any = Field(
        default=FrozenMapping(),
        description="Its other keyword arguments, checked against its signature (e.g. `{b1: 0.95}`); "
        "`learning_rate`, `weight_decay` and `mask` come from the optimizer's own keys.",
    )

    @classmethod
    def suggest(cls, name: str) -> Optional[str]:
        """``optax:lion`` for ``lion`` (an unknown plain name that optax has)."""
        return aliases.suggest(name)

    @property
    def kwargs_dict(self) -> dict[str, Any]:
        """``kwargs`` as plain dicts and lists (a fresh copy each time)."""
        return self.kwargs.thaw()

    @property
    def alias(self) -> str:
        """The optax name: ``lion`` for ``optax:lion``."""
        return self.name.removeprefix("optax:")

    @model_validator(mode="before")
    @classmethod
    def _arguments_go_in_kwargs(cls, raw):
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            alias = raw["name"].removeprefix("optax:")
            takes = aliases.parameters(alias) if alias in aliases.aliases() else {}
            misplaced = [k for k in raw if k not in cls.model_fields and k in takes]
            if misplaced:
                key = misplaced[0]
                raise ValueError(
                    f"{key}: the arguments of optax.{alias} go in kwargs, e.g. optimizer.kwargs.{key}={raw[key]!r}"
                )
        return raw

    @field_validator("name")
    @classmethod
    def _known_alias(cls, v):
        aliases.lookup(v.removeprefix("optax:"))
        return v

    @field_validator("kwargs", mode="before")
    @classmethod
    def _freeze_kwargs(cls, v):
        return _freeze_mapping(v)

    @field_validator("kwargs")
    @classmethod
    def _kwargs_in_signature(cls, v, info):
        if "name" in info.data:  # else the name's own error says what is wrong
            aliases.check_kwargs(info.data["name"].removeprefix("optax:"), v.thaw())
        return v

    @model_validator(mode="after")
    def _builds(self):
        if self.schedule.name != "constant" and not aliases.takes_schedule(self.alias):
            raise ValueError(
                f"schedule: optax.{self.alias} takes a number as learning_rate, not a schedule; set "
                "optimizer.schedule={name: constant}"
            )
        try:
            self._recipe(optax.constant_schedule(self.learning_rate), self.weight_decay)
        except (TypeError, ValueError) as e:
            raise ValueError(f"kwargs: {aliases.signature_text(self.alias)} refused them: {e}") from None
        return self

    def _decoupled(self) -> bool:
        return "weight_decay" in aliases.parameters(self.alias)

    def _recipe(self, schedule, weight_decay):
        fn, takes = aliases.aliases()[self.alias], aliases.parameters(self.alias)
        kwargs = self.kwargs_dict
        if "weight_decay" in takes:
            kwargs["weight_decay"] = weight_decay
        if "mask" in takes and "weight_decay" in takes:
            kwargs["mask"] = _decay_mask
        learning_rate = schedule if aliases.takes_schedule(self.alias) else float(schedule(0))
        return fn(learning_rate, **kwargs)


OPTIMIZER_VARIANTS = {
    "sgd": SgdOptimizer,
    "momentum": MomentumOptimizer,
    "nesterov": NesterovOptimizer,
    "adam": AdamOptimizer,
    "adamw": AdamwOptimizer,
    "rmsprop": RmspropOptimizer,
}
OptimizerConfig = _union("optimizer", OPTIMIZER_VARIANTS, default="adam", prefixed={"optax:": OptaxOptimizer})
