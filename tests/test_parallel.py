"""The same config on 1 device, 8 simulated devices and 2 processes gives the same losses."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = str(Path(__file__).resolve().parent / "parallel_worker.py")


def run_worker(*args, devices=8, extra_env=None, check=True):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env.update(extra_env or {})
    done = subprocess.run([sys.executable, WORKER, *map(str, args)], env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(done) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_losses_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for step in a:
        # Sharded reductions sum in another order than one device does: float32 rounding only.
        assert abs(a[step] - b[step]) <= 1e-5 * abs(a[step]), (step, a[step], b[step])


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return losses(run_worker(out, 40, "parallel.num_devices=1"))


@pytest.mark.parametrize("mode", ["data", "fsdp"])
def test_eight_devices_match_one(tmp_path, single, mode):
    result = losses(run_worker(tmp_path, 40, f"parallel.mode={mode}"))
    assert result["devices"] == 8 and single["devices"] == 1
    assert_losses_close(single["losses"], result["losses"])


def test_checkpoint_from_eight_devices_resumes_on_one(tmp_path, single):
    first = losses(run_worker(tmp_path, 20, "parallel.mode=fsdp"))
    assert first["devices"] == 8
    resumed = losses(run_worker(tmp_path, 40, "parallel.num_devices=1", "--resume", devices=1))
    assert resumed["devices"] == 1 and resumed["resumed"] == 20
    assert_losses_close(single["losses"], resumed["losses"])


def test_the_quick_start_config_trains_unchanged_on_one_two_and_eight_devices(tmp_path):
    """digits_mlp as it ships: 1257 training examples in batches of 64 end each epoch with a
    partial batch of 41, which does not divide over 8 devices. It is padded to 64 rows of
    weight 0 on every device count (evaluation batches too), so the logged losses agree."""
    one = losses(run_worker(tmp_path / "one", 3, "--plain", "log.every_steps=10", devices=1))
    for devices in (2, 8):
        many = losses(run_worker(tmp_path / f"d{devices}", 3, "--plain", "log.every_steps=10", devices=devices))
        assert many["devices"] == devices
        assert {k.split("@")[0] for k in many["losses"]} == {"train", "val", "test"}
        assert_losses_close(one["losses"], many["losses"])


def test_batch_that_does_not_divide_over_devices_is_a_clear_error(tmp_path):
    done = run_worker(tmp_path, 5, "data.batch_size=60", check=False)
    assert done.returncode != 0 and "data.batch_size (60) must divide evenly over the 8 devices" in done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_only_process_zero_writes(tmp_path, single):
    port = free_port()
    out = tmp_path / "run"
    args = [out, 40, "parallel.distributed=true", f"parallel.coordinator_address=localhost:{port}", "parallel.num_processes=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, *map(str, args), f"parallel.process_id={pid}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for pid in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    result = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert result["devices"] == 2
    assert not [l for l in outputs[1][0].splitlines() if l.startswith("{")]  # process 1 reports nothing
    assert_losses_close(single["losses"], result["losses"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len([l for l in lines if '"train"' in l]) == len(single["losses"])  # written once, not twice


ACCUMULATION_COLLECTIVES = """
import re, sys
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import fntrain as ft
import fntrain.step as step_lib

mesh = Mesh(np.asarray(jax.devices()), ("data",))
net = ft.nn.mlp((64,), 10)
x, y = jnp.ones((256, 32)), jnp.zeros((256,), jnp.int32)
params, state = net.init(jax.random.key(0), x[:1])
opt = optax.sgd(0.1)
ts = ft.TrainState.create(params, state, opt, key=jax.random.key(0))
replicated = jax.tree.map(lambda _: NamedSharding(mesh, P()), ts)
if sys.argv[1] == "contiguous":  # the control: microbatch j = rows [j B/N, (j + 1) B/N)
    step_lib.microbatches = lambda b, n: jax.tree.map(lambda a: a.reshape(n, -1, *a.shape[1:]), b)
step = ft.make_train_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy), opt, accumulate_steps=4,
                          state_sharding=replicated, batch_sharding=NamedSharding(mesh, P("data")))
text = step.lower(ts, (x, y)).compile().as_text()
print(sorted(set(re.findall(r"(all-to-all|all-gather|collective-permute|all-reduce|reduce-scatter)", text))))
"""


def test_accumulated_microbatches_stay_on_their_devices():
    """On 8 devices the accumulated step's only collective is the gradient all-reduce: each
    microbatch takes its rows from every device's own block (the control, contiguous
    microbatches, has to gather rows across devices)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    found = {}
    for split in ("strided", "contiguous"):
        done = subprocess.run([sys.executable, "-c", ACCUMULATION_COLLECTIVES, split], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        found[split] = done.stdout.strip().splitlines()[-1]
    assert found["strided"] == "['all-reduce']"
    assert "all-gather" in found["contiguous"] or "all-to-all" in found["contiguous"]
