"""Builders: config sections in, the objects the loop runs on out.

They run once, before training; the jitted step never reads the config. Each section
class builds its own object (``DigitsData.build``, ``MlpModel.build``, ...); these
functions are the stable entry points the loop and the CLI call.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import numpy as np
import optax

from fntrain import config as cfg
from fntrain import data as data_lib
from fntrain import nn
from fntrain.errors import ConfigError
from fntrain.registry import call_user  # noqa: F401 - re-exported: user code calls builders.call_user

__all__ = [
    "build_data", "build_loss", "build_model", "build_optimizer", "build_schedule", "call_user", "data_targets",
    "infer_num_outputs",
]


def build_data(
    c: cfg.DataConfig, *, seed: int, key: jax.Array, targets: Optional[data_lib.Targets] = None
) -> data_lib.Splits:
    """Loads, checks, splits (with ``key``) and optionally standardizes the configured dataset.

    Float targets of shape ``[N]`` become ``[N, 1]`` so they match a network's ``[N, 1]`` output.
    ``targets`` (``data_targets(config)``) says which label checks apply; None: none.
    """
    return c.build(seed=seed, key=key, targets=targets)


def data_targets(config: cfg.Config) -> data_lib.Targets:
    """What the config's loss and model ask of the targets, for the data checks: class labels
    (below ``model.num_outputs`` when it is set), binary labels, or anything (a regression
    loss, or an objective, whose use of the targets is its own)."""
    if config.objective is not None:
        return data_lib.Targets()
    fixed = getattr(config.model, "num_outputs", None) or getattr(config.model, "vocab_size", None)
    return data_lib.Targets(kind=config.loss.targets, num_classes=fixed if config.loss.targets == "classes" else None)


def infer_num_outputs(splits: data_lib.Splits, loss: Union[cfg.LossConfig, str]) -> int:
    """Output width the data asks for: classes for integer labels, else the target width.

    Args:
      splits: the data.
      loss: the loss section (or its ``name``): integer labels ask for one output per class
        when the loss takes class logits, and for one output otherwise (a binary logit).
    """
    class_logits = (cfg.loss_variant(loss) if isinstance(loss, str) else loss).class_logits
    ys = [s.y for s in splits if s is not None]
    if np.issubdtype(splits.train.x.dtype, np.integer):  # token ids: outputs cover inputs and targets
        ys += [s.x for s in splits if s is not None]
    if np.issubdtype(ys[0].dtype, np.integer):
        if not class_logits:
            return 1
        count = max(data_lib.label_range(y)[1] for y in ys) + 1  # read in blocks: data on disk stays there
        if count > data_lib.MAX_INFERRED_CLASSES:
            raise ConfigError(
                f"the data's integer ids reach {count - 1}: inferring one output per id would give {count:,} outputs, "
                f"above the {data_lib.MAX_INFERRED_CLASSES:,} inferred at most; set model.num_outputs (or vocab_size)"
            )
        return int(count)
    return int(ys[0].shape[-1]) if ys[0].ndim > 1 else 1


def build_model(c: cfg.ModelConfig, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
    """The network named by the model section.

    Args:
      c: the model section.
      num_outputs: fills ``num_outputs: null`` (and ``vocab_size: null``).
      input_shape: one example's shape, ``[T]`` for token sequences (fills ``seq_len: null``).
    """
    return c.build(num_outputs, input_shape)


def build_loss(c: cfg.LossConfig) -> Callable:
    """``loss(outputs, targets) -> scalar`` for the loss section."""
    return c.build()


def build_schedule(c: cfg.OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step; decays span ``total_steps`` unless set."""
    return c.schedule.build(c.learning_rate, total_steps)


def build_optimizer(
    c: cfg.OptimizerConfig, total_steps: int, params=None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax optimizer (with clipping, weight decay, groups, plateau scale and EMA as
    configured) and its learning-rate schedule; with ``params``, every group must match one."""
    return c.build(total_steps, params)
