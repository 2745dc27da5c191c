"""Builders: config sections in, the objects the loop runs on out.

They run once, before training; the jitted step never reads the config.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import numpy as np
import optax

from fntrain import config as cfg
from fntrain import data as data_lib
from fntrain import losses as losses_lib
from fntrain import nn
from fntrain.errors import ConfigError
from fntrain.registry import lookup

def call_user(fn: Callable, kwargs: dict, section: str):
    """Calls a user's component, turning a mismatch with its signature into a ConfigError."""
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{section}.kwargs do not fit {getattr(fn, '__qualname__', fn)}{inspect.signature(fn)}: {e}") from None
    except ValueError:  # no signature to check (some builtins): let the call speak
        pass
    return fn(**kwargs)


# --------------------------------------------------------------------------- data


def _load_arrays(c, seed: int) -> data_lib.Arrays:
    if isinstance(c, cfg.DigitsData):
        return data_lib.load_digits()
    if isinstance(c, cfg.ClassificationData):
        return data_lib.make_classification(
            c.num_examples, c.num_features, c.num_classes, seed=seed, class_sep=c.class_sep
        )
    if isinstance(c, cfg.RegressionData):
        return data_lib.make_regression(c.num_examples, c.num_features, c.num_outputs, noise=c.noise, seed=seed)
    if isinstance(c, cfg.NpzData):
        return data_lib.load_npz(c.path, c.x_key, c.y_key)
    if isinstance(c, cfg.IdxData):
        return data_lib.load_idx(c.images_path, c.labels_path)
    if isinstance(c, cfg.CsvData):
        return data_lib.load_csv(
            c.path, target_column=c.target_column, header=c.header, delimiter=c.delimiter, target_dtype=c.target_dtype
        )
    out = call_user(lookup(c.name, "dataset"), c.kwargs_dict, "data")
    try:
        x, y = out
    except (TypeError, ValueError):
        raise ConfigError(f"dataset {c.name!r} must return fntrain.data.Arrays or an (x, y) pair") from None
    return data_lib.Arrays(np.asarray(x), np.asarray(y))


def build_data(c, *, seed: int, key: jax.Array) -> data_lib.Splits:
    """Loads, splits (with ``key``) and optionally standardizes the configured dataset.

    Float targets of shape ``[N]`` become ``[N, 1]`` so they match a network's ``[N, 1]`` output.
    """
    if isinstance(c, cfg.CharLMData):  # a fixed, contiguous split: random windows would leak
        splits, _ = data_lib.load_char_lm(
            seq_len=c.seq_len, val_fraction=c.val_fraction, stride=c.stride, max_chars=c.max_chars
        )
        return splits
    arrays = _load_arrays(c, seed)
    if np.issubdtype(arrays.y.dtype, np.floating) and arrays.y.ndim == 1:
        arrays = arrays._replace(y=arrays.y[:, None])
    if np.issubdtype(arrays.x.dtype, np.floating):
        arrays = arrays._replace(x=arrays.x.astype(np.float32))
    splits = data_lib.split_arrays(arrays, val_fraction=c.val_fraction, test_fraction=c.test_fraction, key=key)
    if c.standardize:
        splits, _ = data_lib.standardize(splits)
    return splits


def infer_num_outputs(splits: data_lib.Splits, loss_name: str) -> int:
    """Output width the data asks for: classes for integer labels, else the target width."""
    ys = [s.y for s in splits if s is not None]
    if np.issubdtype(splits.train.x.dtype, np.integer):  # token ids: outputs cover inputs and targets
        ys += [s.x for s in splits if s is not None]
    if np.issubdtype(ys[0].dtype, np.integer):
        return 1 if loss_name == "sigmoid_binary_cross_entropy" else int(max(y.max() for y in ys)) + 1
    return int(ys[0].shape[-1]) if ys[0].ndim > 1 else 1


# --------------------------------------------------------------------------- model and loss


def build_model(c, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
    """The network named by the model section.

    Args:
      c: the model section.
      num_outputs: fills ``num_outputs: null`` (and ``vocab_size: null``).
      input_shape: one example's shape, ``[T]`` for token sequences (fills ``seq_len: null``).
    """
    if isinstance(c, cfg.MlpModel):
        return nn.mlp(
            c.hidden_sizes, c.num_outputs or num_outputs, activation=c.activation, dropout_rate=c.dropout_rate, norm=c.norm
        )
    if isinstance(c, cfg.CnnModel):
        return nn.cnn(
            c.channels,
            c.num_outputs or num_outputs,
            kernel_size=c.kernel_size,
            pool=c.pool,
            hidden_sizes=c.hidden_sizes,
            activation=c.activation,
            dropout_rate=c.dropout_rate,
            norm=c.norm,
        )
    if isinstance(c, cfg.ResnetModel):
        return nn.resnet(c.stage_sizes, c.num_filters, c.num_outputs or num_outputs)
    if isinstance(c, cfg.TransformerLmModel):
        if c.d_model % c.num_heads:
            raise ConfigError(f"model.num_heads ({c.num_heads}) must divide model.d_model ({c.d_model})")
        seq_len = c.seq_len or (input_shape[0] if input_shape else None)
        if seq_len is None:
            raise ConfigError("model.seq_len is null and the data has no sequence axis to infer it from")
        return nn.transformer_lm(
            c.vocab_size or num_outputs,
            seq_len,
            c.d_model,
            c.num_layers,
            c.num_heads,
            c.mlp_dim,
            dropout_rate=c.dropout_rate,
            position=c.position,
        )
    fn = lookup(c.name, "model")
    kwargs = c.kwargs_dict
    if "num_outputs" not in kwargs and "num_outputs" in inspect.signature(fn).parameters:
        kwargs["num_outputs"] = num_outputs
    net = call_user(fn, kwargs, "model")
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model {c.name!r} must return an fntrain.nn.Module, got {type(net).__name__}")
    return net


def build_loss(c: cfg.LossConfig) -> Callable:
    """``loss(outputs, targets) -> scalar`` for the loss section."""
    if c.name == "softmax_cross_entropy":
        return functools.partial(losses_lib.softmax_cross_entropy, label_smoothing=c.label_smoothing)
    if c.name == "huber":
        return functools.partial(losses_lib.huber, delta=c.delta)
    if c.name in losses_lib.LOSSES:
        return losses_lib.LOSSES[c.name]
    fn = lookup(c.name, "loss")
    return functools.partial(fn, **c.kwargs_dict) if c.kwargs else fn


# --------------------------------------------------------------------------- optimizer


def build_schedule(c: cfg.OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step; decays span ``total_steps`` unless set."""
    s, lr = c.schedule, c.learning_rate
    decay_steps = s.decay_steps or total_steps
    if s.name == "constant":
        return optax.constant_schedule(lr)
    if s.name == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps, alpha=s.end_value / lr)
    if s.name == "warmup_cosine":
        if s.warmup_steps >= decay_steps:
            raise ConfigError(
                f"optimizer.schedule.warmup_steps ({s.warmup_steps}) must be below the decay steps ({decay_steps})"
            )
        return optax.warmup_cosine_decay_schedule(0.0, lr, s.warmup_steps, decay_steps, s.end_value)
    if s.name == "linear":
        return optax.linear_schedule(lr, s.end_value, decay_steps)
    if s.name == "piecewise":
        return optax.piecewise_constant_schedule(lr, dict(zip(s.boundaries, s.scales)))
    if s.name == "exponential":
        return optax.exponential_decay(lr, s.transition_steps, s.decay_rate, end_value=s.end_value or None)
    raise AssertionError(s.name)  # unreachable: the schema admits only the names above


def _decay_mask(params):
    # Decay matrices and kernels; biases, norm scales and offsets are left alone.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def build_optimizer(c: cfg.OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax optimizer (with clipping and weight decay) and its learning-rate schedule."""
    schedule = build_schedule(c, total_steps)
    momentum = c.momentum if c.momentum is not None else (0.9 if c.name in ("momentum", "nesterov") else None)
    if c.name == "sgd":
        base = optax.sgd(schedule)
    elif c.name in ("momentum", "nesterov"):
        base = optax.sgd(schedule, momentum=momentum, nesterov=c.name == "nesterov")
    elif c.name == "adam":
        base = optax.adam(schedule, b1=c.b1, b2=c.b2, eps=c.eps)
    elif c.name == "adamw":
        base = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=_decay_mask)
    else:
        base = optax.rmsprop(schedule, decay=c.decay, eps=c.eps, momentum=momentum)
    parts = []
    if c.clip_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(c.clip_grad_norm))
    if c.weight_decay and c.name != "adamw":
        parts.append(optax.add_decayed_weights(c.weight_decay, mask=_decay_mask))
    return optax.chain(*parts, base), schedule
