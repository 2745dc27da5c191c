"""The memory estimate: parameter bytes from ``jax.eval_shape``, refused past the free memory."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fntrain import memory, nn
from fntrain.errors import ConfigError


class FakeAccelerator:
    platform, device_kind = "gpu", "NVIDIA H200"

    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_parameter_bytes_come_from_shapes_without_allocating():
    net = nn.mlp([100_000, 100_000], 10)  # 1e10 weights: 40 GB if allocated
    shapes = jax.eval_shape(net.init, jax.random.key(0), np.zeros((2, 8), np.float32))
    assert memory.tree_bytes(shapes) == 4 * (8 * 100_000 + 100_000 + 100_000 * 100_000 + 100_000 + 100_000 * 10 + 10)


def test_an_accelerator_reports_its_free_memory():
    device = FakeAccelerator({"bytes_limit": 100 << 30, "bytes_in_use": 30 << 30})
    assert memory.available_bytes(device) == (70 << 30, "free on NVIDIA H200")
    assert memory.available_bytes(FakeAccelerator(None))[0] is None  # unknown: no check


def test_the_cpu_estimate_is_the_machines_available_memory():
    free, where = memory.available_bytes(jax.devices("cpu")[0])
    assert 0 < free < 1 << 50 and where


def test_check_fits_names_the_estimate_the_key_and_the_way_out(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: (1 << 30, "free on a test device"))
    params = {"w": jax.ShapeDtypeStruct((1 << 28,), np.float32)}  # 1 GiB
    with pytest.raises(ConfigError, match=r"^model: training model 'mlp' needs at least 4 GiB .*2.68e\+08 parameters, "
                                          r"1 GiB, x4 .*more than the 1 GiB free on a test device; make the model smaller"):
        memory.check_fits(params, 0, model="model 'mlp'")
    with pytest.raises(ConfigError, match=r"^data.batch_size: .*lower data.batch_size"):
        memory.check_fits({"w": jax.ShapeDtypeStruct((8,), np.float32)}, 2 << 30, model="model 'mlp'")
    memory.check_fits(params, 0, model="model 'mlp'", shards=8)  # fsdp: an eighth on each device fits
    monkeypatch.setenv("FNTRAIN_MEMORY_CHECK", "off")
    memory.check_fits(params, 0, model="model 'mlp'")
