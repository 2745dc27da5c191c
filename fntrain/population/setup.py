"""A population's set-up: members, their data and keys, the stacked initial state, the steps.

Each member's initial parameters and its keys (shuffling, dropout) come from
:func:`fntrain.experiment.build_experiment` of its own config, exactly as its single run
draws them. Members with the same seed share one data set; data sets that come out equal
(fixed splits from files) are held once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fntrain import builders
from fntrain import config as cfg
from fntrain import data as data_lib
from fntrain.errors import ConfigError
from fntrain.experiment import Experiment, build_experiment
from fntrain.population.members import Member, grid_arrays
from fntrain.population.step import NetShape, init_opt_state, member_loss_fn
from fntrain.state import TrainState


class MemberData(NamedTuple):
    """The members' data, stacked over the distinct data sets.

    Attributes:
      train, val, test: ``(x [D, N, ...], y [D, N, ...])`` NumPy arrays (val, test: None if absent).
      index: ``[M] int32``: the data set member ``m`` trains and evaluates on.
      splits: each member's own :class:`fntrain.data.Splits` (views of the above).
    """

    train: tuple
    val: Optional[tuple]
    test: Optional[tuple]
    index: np.ndarray
    splits: list


def check_supported(config: cfg.Config) -> None:
    """Refuses, naming the key, what a population does not train yet."""
    oc, pc = config.optimizer, config.parallel
    refused = [
        (pc.mode == "fsdp", "parallel.mode", "a population splits its members over the devices, not its parameters; set it to data"),
        (pc.distributed, "parallel.distributed", "a population runs in one process"),
        (oc.ema_decay is not None, "optimizer.ema_decay", "an EMA of the weights is not supported in a population yet"),
        (oc.reduce_on_plateau is not None, "optimizer.reduce_on_plateau", "reduce_on_plateau is not supported in a population yet"),
        (config.log.layer_stats, "log.layer_stats", "layer statistics are not supported in a population"),
        (bool(getattr(config.data, "standardize_targets", False)), "data.standardize_targets",
         "standardized targets are not supported in a population yet"),
        (config.data.on_device is False, "data.on_device", "a population keeps its training data on the device; set it to null"),
    ]
    for bad, key, why in refused:
        if bad:
            raise ConfigError(f"{key}: {why}; remove population, or this key")


def member_experiments(members: list[Member]) -> dict[int, Experiment]:
    """``{seed: Experiment}``: data, network and initial parameters of each distinct seed
    (the grid's values change none of them)."""
    exps = {}
    for m in members:
        if m.seed not in exps:
            exps[m.seed] = build_experiment(m.config)
            if any(data_lib.is_lazy(a) for s in exps[m.seed].splits if s is not None for a in (s.x, s.y)):
                raise ConfigError("data: a population needs its data in memory; data read from disk is not supported")
    return exps


def _same(a: data_lib.Splits, b: data_lib.Splits) -> bool:
    for sa, sb in zip(a, b):
        if (sa is None) != (sb is None):
            return False
        if sa is not None and not (np.array_equal(sa.x, sb.x) and np.array_equal(sa.y, sb.y)):
            return False
    return True


def member_data(members: list[Member], exps: dict[int, Experiment]) -> MemberData:
    """Each member's splits, stacked over the distinct data sets."""
    distinct: list[data_lib.Splits] = []
    set_of_seed = {}
    for seed, exp in exps.items():
        found = next((j for j, s in enumerate(distinct) if _same(s, exp.splits)), None)
        if found is None:
            distinct.append(exp.splits)
            found = len(distinct) - 1
        set_of_seed[seed] = found
    for name in ("train", "val", "test"):
        sizes = {getattr(s, name).num_examples for s in distinct if getattr(s, name) is not None}
        if len(sizes) > 1:
            raise ConfigError(f"population: the members' {name} splits differ in size ({sorted(sizes)}); they must match")

    def stack(name):
        if getattr(distinct[0], name) is None:
            return None
        return tuple(np.stack([np.asarray(getattr(getattr(s, name), f)) for s in distinct]) for f in ("x", "y"))

    index = np.array([set_of_seed[m.seed] for m in members], np.int32)
    return MemberData(stack("train"), stack("val"), stack("test"), index, [exps[m.seed].splits for m in members])


def stack_trees(trees: list) -> Any:
    """``[tree, ...]`` -> one tree whose leaves are ``[M, ...]``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def initial_state(
    config: cfg.Config, members: list[Member], exps: dict[int, Experiment], shape: NetShape, total_steps: int
) -> TrainState:
    """The population's ``TrainState`` before the first step: every leaf ``[M, ...]``."""
    params = stack_trees([exps[m.seed].params for m in members])
    model_state = stack_trees([exps[m.seed].model_state for m in members])
    keys = jnp.stack([jax.random.key_data(exps[m.seed].keys["step"]) for m in members])
    try:
        opt_state = init_opt_state(config, shape, total_steps, params, grid_arrays(members))
        # Tracing the step's objective once here turns a grid key the builders branch on into a config error.
        _trace_objective(config, shape, members, exps[members[0].seed])
    except jax.errors.ConcretizationTypeError as e:
        raise ConfigError(
            f"population.grid: {', '.join(members[0].values)} cannot vary with this config's optimizer, schedule, "
            f"model or loss, which branch on the value ({str(e).splitlines()[0][:200]}); train these values as "
            "separate runs"
        ) from None
    key = jax.random.wrap_key_data(keys, impl=jax.random.key_impl(exps[members[0].seed].keys["step"]))
    return TrainState(jnp.zeros((len(members),), jnp.int32), params, model_state, opt_state, key)


def _trace_objective(config: cfg.Config, shape: NetShape, members: list[Member], exp: Experiment) -> None:
    """Traces one member's training loss with its grid values as tracers (dropout, label smoothing)."""
    x, y = exp.splits.train.x[:2], exp.splits.train.y[:2]
    values = {k: v[0] for k, v in grid_arrays(members).items()}

    def loss(v, params, model_state):
        return member_loss_fn(config, shape, v)(params, model_state, (x, y), jax.random.key(0))[0]

    jax.eval_shape(loss, values, exp.params, exp.model_state)


def member_schedules(members: list[Member], exps: dict[int, Experiment], total_steps: int) -> list[Callable]:
    """Each member's learning-rate schedule, from its own optimizer (built once on the host,
    which also checks its groups and schedule as its single run would)."""
    return [builders.build_optimizer(m.config.optimizer, total_steps, exps[m.seed].params)[1] for m in members]


def member_iterators(config: cfg.Config, members: list[Member], exps: dict[int, Experiment], positions) -> list:
    """Each member's training batch iterator, with its own shuffling key, at ``positions``."""
    dc = config.data
    return [
        data_lib.BatchIterator(
            exps[m.seed].splits.train, dc.batch_size, key=exps[m.seed].keys["shuffle"], shuffle=dc.shuffle,
            drop_last=dc.drop_last, state=position,
        )
        for m, position in zip(members, positions)
    ]
