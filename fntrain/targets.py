"""What the targets ask of the network: standardized regression outputs, enough class outputs.

``data.standardize_targets`` gives the network a fixed output transform,
``y = mean + std * f(x)``, with the training targets' mean and std per output. ``f``
then learns standardized targets (its outputs start near 0, i.e. predictions near the
mean), while the loss, the metrics and every prediction, a loaded model's included, are
in the original units. The constants live in the model state under ``target_scale``
(saved with the parameters, never trained).

Gradients are those of the loss in the original units: for mean squared error,
``std^2`` times those of training on standardized targets (``std`` for a loss that is
linear in the error, such as Huber beyond ``delta``). Adam-type optimizers normalise that
scale away (up to ``eps``); with sgd or momentum divide the learning rate by ``std^2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fntrain import data as data_lib
from fntrain import nn
from fntrain.errors import ConfigError

__all__ = ["TARGET_SCALE", "check_outputs", "scale_outputs", "standardized_outputs"]

TARGET_SCALE = "target_scale"  # the model-state key of the constants


def _rescale(x, state):
    """``mean + std * x`` in at least float32 (a bfloat16 network's outputs included)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return state["mean"] + state["std"] * x


def scale_outputs(net: nn.Module, mean: np.ndarray, std: np.ndarray) -> nn.Module:
    """``net`` whose outputs ``f`` become ``mean + std * f``; the constants ``[O]`` are kept
    in the model state under ``target_scale``.

    ``name`` and ``children`` are ``net``'s plus a last layer ``target_scale``, so summaries
    and per-layer statistics see the transform.
    """
    constants = {"mean": jnp.asarray(mean, jnp.float32), "std": jnp.asarray(std, jnp.float32)}
    scale = nn.Module(lambda key, x: ({}, dict(constants)), lambda p, s, x, *, train=False, key=None: (_rescale(x, s), s),
                      TARGET_SCALE)

    def init(key, x):
        params, state = net.init(key, x)
        if TARGET_SCALE in state:
            raise ValueError(f"scale_outputs: the network's model state already has a {TARGET_SCALE!r} entry")
        return params, {**state, TARGET_SCALE: dict(constants)}

    def apply(params, state, x, *, train=False, key=None):
        inner = {k: v for k, v in state.items() if k != TARGET_SCALE}
        y, inner = net.apply(params, inner, x, train=train, key=key)
        return _rescale(y, state[TARGET_SCALE]), {**inner, TARGET_SCALE: state[TARGET_SCALE]}

    return nn.Module(init, apply, net.name, (*net.children, (TARGET_SCALE, scale)) if net.children else ())


def standardized_outputs(net: nn.Module, y, config) -> nn.Module:
    """``scale_outputs`` with the mean and std of the training targets ``y [N, O]``.

    Raises:
      ConfigError: the targets are not floats (class labels are not standardized), or the
        loss takes class labels.
    """
    kind = "an objective" if config.objective is not None else f"loss {config.loss.name!r}"
    if not np.issubdtype(y.dtype, np.floating) or (config.objective is None and config.loss.targets != "any"):
        raise ConfigError(
            f"data.standardize_targets: needs float regression targets and a regression loss; the targets are "
            f"{y.dtype} and the config has {kind}: set it to false"
        )
    mean, std = data_lib.moments(y)
    return scale_outputs(net, mean, std)


def check_outputs(net: nn.Module, params, model_state, splits: data_lib.Splits, config) -> None:
    """Class labels must be below the network's output width (a user's model may fix it).

    Raises:
      DataError: the largest label reaches the number of outputs.
    """
    if config.objective is not None or config.loss.targets != "classes":
        return
    ys = [(name, s.y) for name, s in zip(("train", "val", "test"), splits) if s is not None]
    if not ys or not np.issubdtype(ys[0][1].dtype, np.integer):
        return
    x = jax.ShapeDtypeStruct((1, *splits.train.x.shape[1:]), splits.train.x.dtype)
    outputs = nn.output_shape(net, params, model_state, x).shape[-1]
    for name, y in ys:
        high = data_lib.label_range(y)[1]
        if high >= outputs:
            raise data_lib.DataError(
                f"{_labels_file(config.data, name)}: the {name} split has label {high}, but model "
                f"{config.model.name!r} has {outputs} outputs; expected labels 0..{outputs - 1}: give the model "
                f"{high + 1} outputs or remap the labels"
            )


def _labels_file(data_config, split: str) -> str:
    """Where a split's labels come from, for messages: its file, else the dataset's name."""
    prefix = "" if split == "train" else f"{split}_"
    for field in (f"{prefix}y_path", f"{prefix}labels_path", f"{prefix}path", "y_path", "labels_path", "path"):
        value = getattr(data_config, field, None)
        if value:
            return value
    return f"dataset {data_config.name!r}"
