"""Where a population runs: its members split over the devices of a one-axis ``member`` mesh.

Members never exchange anything (each gradient is its own member's), so sharding the member
axis of the stacked state, the rows and the grid values over ``D`` devices runs ``M / D``
members per device with no collective at all; the training data is replicated.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fntrain import config as cfg
from fntrain.errors import ConfigError

MEMBER_AXIS = "member"


class MemberPlacement(NamedTuple):
    """Attributes:
      mesh: the ``member`` mesh.
      member: leading axis split over the mesh (state, rows, values, metrics).
      replicated: a whole copy on every device (the data).
    """

    mesh: Mesh
    member: NamedSharding
    replicated: NamedSharding

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size


def member_placement(config: cfg.Config, size: int) -> MemberPlacement:
    """``parallel.num_devices`` devices (null: every visible device when their number divides
    the population, else one), which must divide the ``size`` members.

    Raises:
      ConfigError: more devices than visible, or a number that does not divide ``size``.
    """
    devices = jax.devices()
    wanted: Optional[int] = config.parallel.num_devices
    if wanted is None:
        wanted = len(devices) if size % len(devices) == 0 else 1
    if wanted > len(devices):
        raise ConfigError(f"parallel.num_devices is {wanted} but only {len(devices)} devices are visible")
    if size % wanted:
        raise ConfigError(
            f"parallel.num_devices ({wanted}) must divide the population's {size} members (they are split over "
            "the devices, whole members per device); choose a population size or a device count that fits"
        )
    mesh = Mesh(np.array(devices[:wanted]), (MEMBER_AXIS,))
    return MemberPlacement(mesh, NamedSharding(mesh, P(MEMBER_AXIS)), NamedSharding(mesh, P()))
