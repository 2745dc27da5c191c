"""The ``population`` section: many seeds and hyperparameters trained at once (``fntrain.population``).

A population's members are ``grid x seeds``: every combination of the ``grid`` values, each
trained with the seeds ``seed, seed + 1, ..., seed + size - 1``. The grid may only vary
numbers that change neither shapes nor code (:data:`GRID_KEYS`), because every member runs
in the same compiled step, with its hyperparameters passed in as data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, Iterator

from pydantic import Field, field_validator

from fntrain.config.base import FrozenMapping, PositiveInt, _freeze_mapping, _Section
from fntrain.limits import quote

# Numbers the step can take as traced values: they enter arithmetic only, never a shape or a branch.
GRID_KEYS = (
    "optimizer.learning_rate",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.eps",
    "optimizer.schedule.end_value",
    "model.dropout_rate",
    "loss.label_smoothing",
)
MAX_MEMBERS = 4096


def _flat(mapping: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class PopulationConfig(_Section):
    size: PositiveInt = Field(
        1, description="Seeds per grid point: members train with `seed`, `seed + 1`, ..., `seed + size - 1`."
    )
    grid: Any = Field(
        default=FrozenMapping(),
        description="Hyperparameters to vary, `{dotted.key: [values]}`; members are every combination of the "
        "values times the seeds. Only numbers that change no shape or code can vary: "
        + ", ".join(f"`{k}`" for k in GRID_KEYS)
        + ". Each member is exactly the run `seed=<its seed> <its values>`.",
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _freeze_grid(cls, v):
        # {optimizer: {learning_rate: [...]}} (as population.grid.optimizer.learning_rate=[...] makes) is
        # {optimizer.learning_rate: [...]}.
        return _freeze_mapping(dict(_flat(v)) if isinstance(v, Mapping) else FrozenMapping() if v is None else v)

    @field_validator("grid")
    @classmethod
    def _numeric_grid_over_known_keys(cls, v):
        for key, values in v.items():
            if key not in GRID_KEYS:
                raise ValueError(
                    f"{quote(key)} cannot vary within a population: it changes shapes or code, so its members "
                    f"could not share one compiled step; the keys a grid can vary are {', '.join(GRID_KEYS)} "
                    "(train other values as separate runs)"
                )
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"{quote(key)}: expected a non-empty list of numbers, got {values!r}")
            for value in values:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{quote(key)}: expected finite numbers, got {value!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"{quote(key)}: lists a value twice; list each value once")
        rates = v.get("model.dropout_rate")
        if rates is not None and 0 in rates and any(rates):
            raise ValueError(
                "'model.dropout_rate': a rate of 0 builds the network without its dropout layers, which changes "
                "its layers (and the keys they draw); grid over positive rates only, and train rate 0 as a "
                "separate run"
            )
        # Every key a grid takes is a float field: 0 is 0.0 there.
        return FrozenMapping({k: [float(x) for x in values] for k, values in v.items()})

    def points(self) -> list[dict[str, float]]:
        """The grid's combinations in order (the last key varies fastest); ``[{}]`` without a grid."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]

    def num_members(self) -> int:
        return len(self.points()) * self.size
