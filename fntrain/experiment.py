"""The experiment: data, network, objective and initial parameters, built from a config."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax

from fntrain import builders
from fntrain import config as cfg
from fntrain import data as data_lib
from fntrain import memory, nn
from fntrain import targets as targets_lib
from fntrain.errors import ConfigError
from fntrain.limits import first_line, quote
from fntrain.metrics import METRICS
from fntrain.registry import call_user, lookup
from fntrain.step import supervised_loss


class Experiment(NamedTuple):
    """Everything built from a config before the first step.

    Attributes:
      splits: the train/val/test arrays.
      net: the network.
      loss: ``loss(outputs, targets) -> scalar``; None when the config names an objective.
      loss_fn: the step's ``loss_fn(params, model_state, batch, key)``.
      params, model_state: the initial parameters and model state.
      keys: the PRNG keys drawn from the seed: ``init``, ``split``, ``shuffle``, ``step``.
    """

    splits: data_lib.Splits
    net: nn.Module
    loss: Any
    loss_fn: Any
    params: Any
    model_state: Any
    keys: dict[str, jax.Array]


def seed_keys(seed: int) -> dict[str, jax.Array]:
    """The run's independent PRNG keys, all from the config's seed."""
    names = ("init", "split", "shuffle", "step")
    return dict(zip(names, jax.random.split(jax.random.key(seed), len(names))))


def build_splits(config: cfg.Config) -> data_lib.Splits:
    """The checked train/val/test splits of a run (``fntrain.data.load_splits`` is this)."""
    key = seed_keys(config.seed)["split"]
    return builders.build_data(config.data, seed=config.seed, key=key, targets=builders.data_targets(config))


def build_experiment(config: cfg.Config) -> Experiment:
    """Builds data, network and loss, and initialises parameters.

    Raises:
      ConfigError: the data does not fit the network or the loss.
      DataError: bad data (``fntrain.data.check_part``).
    """
    keys = seed_keys(config.seed)
    splits = build_splits(config)
    num_outputs = builders.infer_num_outputs(splits, config.loss)
    net = build_network(config, num_outputs, splits.train.x.shape[1:], splits.train.y)
    loss, loss_fn = build_objective(config, net)
    x, y = splits.train.x[:2], splits.train.y[:2]
    objective = f"objective {quote(config.objective.name)}" if config.objective else f"loss {config.loss.name!r}"
    _check_memory(config, net, keys["init"], splits)
    try:
        params, model_state = _init(net, keys["init"], x, config)
        shapes = jax.eval_shape(loss_fn, params, model_state, (x, y), None)
    except (TypeError, ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"the data (inputs {x.shape[1:]} {x.dtype}, targets {y.shape[1:]} {y.dtype}) does not fit "
            f"model {config.model.name!r} with {objective}: {detail}"
        ) from None
    _check_loss_fn(shapes, objective)
    targets_lib.check_outputs(net, params, model_state, splits, config)
    if config.log.layer_stats and net.name != "serial":
        raise ConfigError(
            f"log.layer_stats needs a sequential network (fntrain.nn.serial or named_serial, as every built-in "
            f"model is); model {config.model.name!r} is not one"
        )
    return Experiment(splits, net, loss, loss_fn, params, model_state, keys)


def build_network(config: cfg.Config, num_outputs: int, input_shape: tuple, train_y=None) -> nn.Module:
    """The config's network for ``num_outputs`` outputs and examples of ``input_shape``, with
    standardized outputs (from ``train_y``, the training targets) and mixed precision as configured."""
    net = builders.build_model(config.model, num_outputs, input_shape)
    if getattr(config.data, "standardize_targets", False):
        net = targets_lib.standardized_outputs(net, train_y, config)
    if config.precision != "float32":
        net = nn.mixed_precision(net, config.precision)
    return net


def _check_memory(config: cfg.Config, net: nn.Module, key: jax.Array, splits: data_lib.Splits) -> None:
    """Refuses, before any parameter is allocated, a model or batch that cannot fit (``fntrain.memory``)."""
    try:
        shapes = jax.eval_shape(net.init, key, splits.train.x[:2])
    except Exception:  # noqa: BLE001 - init fails on these inputs: the real init below says why
        return
    example = splits.train.x[:1].nbytes + splits.train.y[:1].nbytes
    batch = max(config.data.batch_size, config.data.eval_batch_size or 4 * config.data.batch_size)
    shards = 1  # on CPU every device's copy is in the one host memory
    if config.parallel.mode == "fsdp" and jax.devices()[0].platform != "cpu":
        shards = config.parallel.num_devices or jax.device_count()
    memory.check_fits(shapes, batch * example, model=f"model {quote(config.model.name)}", shards=shards)


def _init(net: nn.Module, key: jax.Array, x, config: cfg.Config):
    """``net.init(key, x)``; running out of device memory is a ConfigError naming the model."""
    try:
        return net.init(key, x)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise ConfigError(f"model: {quote(config.model.name)} does not fit in memory: {first_line(e)}") from None


def build_objective(config: cfg.Config, net: nn.Module) -> tuple[Optional[Callable], Callable]:
    """``(loss, loss_fn)``: the config's ``objective`` (``loss`` is then None), or its ``loss``
    on ``(inputs, targets)`` batches with the metrics ``config.metrics`` names."""
    if config.objective is not None:
        factory = config.objective.function()
        loss_fn = call_user(functools.partial(factory, net), config.objective.kwargs_dict, "objective")
        if not callable(loss_fn):
            raise ConfigError(
                f"objective {config.objective.name!r} must return loss_fn(params, model_state, batch, key), "
                f"got {type(loss_fn).__name__}"
            )
        return None, loss_fn
    metric_fns = {
        name: lookup(metric, "metric", METRICS, module_dir=config.metrics_module_dir)
        for name, metric in config.metrics_to_report.items()
    }
    loss = builders.build_loss(config.loss)
    return loss, supervised_loss(net, loss, metric_fns=metric_fns)


def _check_loss_fn(out, objective: str) -> None:
    """``out``, the shapes a ``loss_fn`` returns, must be ``(scalar, (model_state, {name: metric}))``."""
    try:
        loss, (_, metrics) = out
        ok = getattr(loss, "shape", None) == () and isinstance(metrics, dict)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"{objective}: its loss_fn must return (loss, (model_state, metrics)) with a scalar loss and a dict of "
            f"metrics, as fntrain.step describes; got {jax.tree.map(lambda a: getattr(a, 'shape', a), out)}"
        )


def metric_names(exp: Experiment) -> list[str]:
    """The names an evaluation of ``exp`` reports (``loss`` included), found without running it."""
    x, y = exp.splits.train.x[:2], exp.splits.train.y[:2]
    _, (_, metrics) = jax.eval_shape(exp.loss_fn, exp.params, exp.model_state, (x, y), None)
    return [*metrics, "loss"]
