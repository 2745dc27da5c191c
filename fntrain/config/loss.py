"""The ``loss`` section: one class per built-in loss, and one for a user's.

Each class builds ``loss(outputs, targets) -> scalar`` and states, as class attributes,
what the rest of the toolkit needs to know about it:

* ``default_metrics``: ``{name in metrics.jsonl: metric name in fntrain.metrics.METRICS}``,
  what is reported when the config's ``metrics`` is null;
* ``class_logits``: whether the outputs are one logit per class, so that integer labels ask
  for ``max(label) + 1`` outputs (otherwise one output per target value);
* ``targets``: what the data checks hold the targets to (``fntrain.data.Targets.kind``):
  ``"classes"`` (labels 0..C-1), ``"binary"`` (integer labels 0 or 1) or ``"any"``.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Literal, Mapping

from pydantic import Field

from fntrain import losses as losses_lib
from fntrain.config.base import Fraction, PositiveFloat, _Custom, _Section, _union


class _Loss(_Section):
    default_metrics: ClassVar[Mapping[str, str]] = {}
    class_logits: ClassVar[bool] = False
    targets: ClassVar[str] = "any"

    def build(self) -> Callable:
        """``loss(outputs, targets) -> scalar``, the mean over the batch."""
        raise NotImplementedError


class SoftmaxCrossEntropyLoss(_Loss):
    name: Literal["softmax_cross_entropy"] = Field(
        description="Softmax cross-entropy of class logits [..., C]; targets are int class ids or one-hot/soft [..., C]."
    )
    label_smoothing: Fraction = Field(0.0, description="Mix the targets with the uniform distribution: (1 - s) y + s / C.")

    default_metrics = {"accuracy": "accuracy"}
    class_logits = True
    targets = "classes"

    def build(self) -> Callable:
        return functools.partial(losses_lib.softmax_cross_entropy, label_smoothing=self.label_smoothing)


class SigmoidBinaryCrossEntropyLoss(_Loss):
    name: Literal["sigmoid_binary_cross_entropy"] = Field(
        description="Binary cross-entropy of sigmoid(logits) against targets in [0, 1]; int labels 0/1 get one logit."
    )

    # Reported as `accuracy`, as it always has been: the fraction of logits > 0 matching labels > 0.5.
    default_metrics = {"accuracy": "binary_accuracy"}
    targets = "binary"

    def build(self) -> Callable:
        return losses_lib.sigmoid_binary_cross_entropy


class MeanSquaredErrorLoss(_Loss):
    name: Literal["mean_squared_error", "mse"] = Field(
        description="Mean squared error; outputs and targets of equal shape (`mse` is the same loss)."
    )

    def build(self) -> Callable:
        return losses_lib.mean_squared_error


class HuberLoss(_Loss):
    name: Literal["huber"] = Field(description="Huber loss: squared error near 0, absolute error beyond `delta`.")
    delta: PositiveFloat = Field(1.0, description="Where the loss turns linear.")

    def build(self) -> Callable:
        return functools.partial(losses_lib.huber, delta=self.delta)


LOSS_VARIANTS = {
    "softmax_cross_entropy": SoftmaxCrossEntropyLoss,
    "sigmoid_binary_cross_entropy": SigmoidBinaryCrossEntropyLoss,
    "mean_squared_error": MeanSquaredErrorLoss,
    "mse": MeanSquaredErrorLoss,
    "huber": HuberLoss,
}


class CustomLoss(_Custom, _Loss):
    """``fn(outputs, targets, **kwargs) -> scalar``, named or registered (``fntrain.register_loss``)."""

    kind = "loss"
    builtins = tuple(LOSS_VARIANTS)
    class_logits = True  # integer labels give one output per class, as for the built-in cross-entropy
    targets = "classes"

    def build(self) -> Callable:
        fn = self.function()
        return functools.partial(fn, **self.kwargs_dict) if self.kwargs else fn


LossConfig = _union("loss", LOSS_VARIANTS, custom=CustomLoss, default="softmax_cross_entropy")


def loss_variant(name: str) -> type:
    """The loss class a ``loss.name`` picks (``CustomLoss`` for any name not built in)."""
    return LOSS_VARIANTS.get(name, CustomLoss)
