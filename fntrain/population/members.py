"""A population's members: the single runs it stands for, and their hyperparameters as data.

Member ``i`` of ``population: {size: S, grid: G}`` is grid point ``i // S`` (the last grid
key varies fastest) with seed ``seed + i % S``. Its :attr:`Member.config` is the config of
the one run it reproduces, validated as any config is; :func:`with_values` puts traced
values in place of the grid's numbers, so that one compiled step serves every member.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np

from fntrain import config as cfg
from fntrain.errors import ConfigError


class Member(NamedTuple):
    """One member of a population.

    Attributes:
      index: its position, ``0 .. M-1`` (the ``member`` of its metrics.jsonl lines).
      seed: the seed of the run it reproduces.
      values: its grid point, ``{dotted.key: value}`` (``{}`` without a grid).
      config: the config of that run (``population: null``).
    """

    index: int
    seed: int
    values: dict[str, float]
    config: cfg.Config

    def describe(self) -> str:
        """``seed=1 optimizer.learning_rate=0.003``: the overrides that train it alone."""
        return " ".join([f"seed={self.seed}", *(f"{k}={v:g}" for k, v in self.values.items())])


def expand(config: cfg.Config) -> list[Member]:
    """The members of ``config.population`` in order, each with its own validated config.

    Raises:
      ConfigError: a member's config is not valid (e.g. a grid value out of its key's range),
        naming the member and the key.
    """
    pc = config.population
    if pc is None:
        raise ValueError("expand: the config has no population section")
    base = cfg.config_to_dict(config)
    base.pop("population", None)
    members = []
    for point in pc.points():
        for offset in range(pc.size):
            raw = copy.deepcopy(base)
            raw["seed"] = config.seed + offset
            for key, value in point.items():
                _set(raw, key, value)
            index = len(members)
            member = Member(index, config.seed + offset, dict(point), None)
            source = f"population member {index} ({member.describe()})"
            members.append(member._replace(config=cfg.validate(raw, source)))
    return members


def _set(raw: dict, key: str, value: float) -> None:
    """Sets ``raw[a][b][c] = value`` for ``key = "a.b.c"``."""
    *sections, last = key.split(".")
    node = raw
    for part in sections:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"population.grid: {key!r}: the config has no section {part!r} to set it in")
        node = node[part]
    node[last] = value


def grid_arrays(members: list[Member]) -> dict[str, jnp.ndarray]:
    """``{dotted.key: [M] float32}``: each member's grid values, as the step takes them."""
    keys = list(members[0].values) if members else []
    return {k: jnp.asarray(np.array([m.values[k] for m in members], np.float32)) for k in keys}


def with_values(config: cfg.Config, values: Mapping[str, Any]) -> cfg.Config:
    """``config`` with ``values[key]`` (typically tracers) at each dotted key, unvalidated.

    The builders then produce one member's network, loss and optimizer with those numbers as
    traced values; every other key keeps the config's value.
    """
    for key, value in values.items():
        config = _replace(config, key.split("."), value)
    return config


def _replace(section, parts: list[str], value):
    if len(parts) == 1:
        return section.model_copy(update={parts[0]: value})
    child = getattr(section, parts[0])
    return section.model_copy(update={parts[0]: _replace(child, parts[1:], value)})
