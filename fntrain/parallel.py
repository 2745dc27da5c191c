"""Devices, meshes and shardings: one config on one device, many devices or many hosts.

Everything here goes through JAX's own machinery (``jax.sharding.Mesh``,
``NamedSharding``, ``jax.jit`` shardings, ``jax.distributed``); there is no pmap.
The mesh has one axis, ``data``: batches are split along it, and parameters and
optimizer state are either replicated (``mode: data``) or split along it too
(``mode: fsdp``, for models that do not fit one device).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fntrain.errors import ConfigError

DATA_AXIS = "data"


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None) -> None:
    """Starts ``jax.distributed`` once per process (a no-op if it is already running).

    With all arguments None, JAX detects the cluster (SLURM, TPU pods, Open MPI...).
    """
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


class Placement(NamedTuple):
    """Where the train state and batches live.

    Attributes:
      mesh: the device mesh, one axis named ``data``.
      fsdp: whether parameters and optimizer state are sharded over ``data``.
    """

    mesh: Mesh
    fsdp: bool

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def batch(self) -> NamedSharding:
        """Batch leaves are split along their first axis."""
        return NamedSharding(self.mesh, P(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def state_shardings(self, tree) -> Any:
        """A sharding per leaf: replicated, or (fsdp) split along the largest axis that divides."""
        if not self.fsdp:
            return jax.tree.map(lambda _: self.replicated, tree)
        return jax.tree.map(self._fsdp_sharding, tree)

    def _fsdp_sharding(self, leaf) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        n = self.num_devices
        candidates = [i for i, d in enumerate(shape) if d % n == 0 and d >= n]
        if not candidates:
            return self.replicated  # small leaves (biases, scalars) are cheaper to keep whole
        axis = max(candidates, key=lambda i: shape[i])
        spec = [None] * len(shape)
        spec[axis] = DATA_AXIS
        return NamedSharding(self.mesh, P(*spec))

    def put_state(self, tree, shardings) -> Any:
        """Places a pytree every process holds whole (e.g. the initial state) with ``shardings``."""
        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)

        def put(leaf, sharding):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                data = put(jax.random.key_data(leaf), sharding)
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(put, tree, shardings)

    def global_batch(self, local_batch) -> Any:
        """Turns this process's rows of the global batch into global, sharded arrays.

        On one process this is a plain ``device_put``; on many, every process passes
        its own contiguous slice of rows (see ``process_rows``).
        """
        if jax.process_count() == 1:
            return jax.device_put(local_batch, self.batch)
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(self.batch, a), local_batch)

    def put_batch(self, batch) -> Any:
        """Places a batch every process holds in full: split over devices if its size
        divides, else replicated (the final partial batch of an evaluation)."""
        if jax.tree.leaves(batch)[0].shape[0] % self.num_devices == 0:
            return self.global_batch(process_rows(batch))
        if jax.process_count() == 1:
            return jax.device_put(batch, self.replicated)
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(self.replicated, a), batch)

    def check_batch_size(self, batch_size: int, what: str) -> None:
        if batch_size % self.num_devices:
            raise ConfigError(
                f"{what} ({batch_size}) must divide evenly over the {self.num_devices} devices of the mesh; "
                f"choose a multiple of {self.num_devices} or set parallel.num_devices"
            )


def make_placement(num_devices: Optional[int] = None, *, fsdp: bool = False) -> Placement:
    """A one-axis mesh over the first ``num_devices`` devices (None: all of them, on every host)."""
    devices = jax.devices()
    if num_devices is not None:
        if num_devices > len(devices):
            raise ConfigError(
                f"parallel.num_devices is {num_devices} but only {len(devices)} devices are visible "
                f"({devices[0].platform}); set it to null to use them all"
            )
        if jax.process_count() > 1 and num_devices != len(devices):
            raise ConfigError("parallel.num_devices must be null (all devices) when running on several processes")
        devices = devices[:num_devices]
    return Placement(Mesh(np.asarray(devices), (DATA_AXIS,)), fsdp)


def process_rows(batch, *, process_index: Optional[int] = None, process_count: Optional[int] = None):
    """This process's contiguous slice of a global batch's rows: what it feeds to ``global_batch``."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if count == 1:
        return batch

    def rows(a):
        per = a.shape[0] // count
        return a[index * per : (index + 1) * per]

    return jax.tree.map(rows, batch)


def to_host(tree) -> Any:
    """NumPy copies of replicated (or single-device) arrays, on any process."""

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(a.addressable_data(0))
        return np.asarray(a)

    return jax.tree.map(one, tree)


def gather_to_host(tree) -> Any:
    """Whole NumPy copies of (possibly sharded) arrays; on several processes every one must call it."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
