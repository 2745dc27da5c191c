"""Throughput of populations: examples/s summed over the members, against one run.

    python scripts/bench_population.py                      # M = 1, 4, 8, 16, 32 on three workloads
    python scripts/bench_population.py --sizes 1,8 --workloads digits_mlp --seconds 1
    python scripts/bench_population.py --tiny               # a short smoke run

Workloads (each a config with a few overrides):
  digits_mlp  configs/digits_mlp.yaml as it is (MLP 64-512-256-10, dropout 0.3, AdamW, batch 64)
  w1_mlp      the W1 network of scripts/bench.py on generated data: MLP 784-512-512-10, Adam, batch 128
  digits_cnn  configs/digits_cnn.yaml as it is (conv 16, 32 with batch norm, dense 128, batch 64)

For each workload, "one run" is the single run's jitted train step exactly as `fntrain train`
builds it (training split on the device, rows per step), and a population of M members is
`population.grid={optimizer.learning_rate: [M values]}` (one seed, so set-up builds one
experiment) through the population's vmapped step. Both are timed in steady state (after
compilation, `block_until_ready` per window, the median of ``--windows`` windows of at least
``--seconds``, the windows of one run and of every population size interleaved, so that the
load of a shared machine falls on all of them alike). The table gives examples/s summed over the members and the ratio to one run.
The load average is printed before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = {
    "digits_mlp": ("configs/digits_mlp.yaml", []),
    "w1_mlp": ("configs/digits_mlp.yaml", [
        "data={name: classification, num_examples: 4096, num_features: 784, num_classes: 10, batch_size: 128}",
        "model.hidden_sizes=[512,512]", "model.dropout_rate=0.0", "optimizer={name: adam, learning_rate: 1e-3}",
    ]),
    "digits_cnn": ("configs/digits_cnn.yaml", []),
}
COMMON = ["log.progress=none", "log.plot=false", "log.tensorboard=false", "output_dir=/tmp/fntrain_bench_population"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _window(call, seconds: float) -> float:
    """Seconds per call over one window of at least ``seconds``."""
    import jax

    count, start = 0, time.perf_counter()
    while True:
        out = call()
        count += 1
        if time.perf_counter() - start >= seconds:
            break
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / count


def interleaved_rates(timers: dict, seconds: float, windows: int) -> dict:
    """``{name: examples/s}``: the median over ``windows`` rounds, each timing one window of every
    timer in turn, so that a change in the machine's load falls on all of them alike."""
    per_call = {name: [] for name in timers}
    for _ in range(windows):
        for name, (call, _) in timers.items():
            per_call[name].append(_window(call, seconds))
    return {name: timers[name][1] / statistics.median(ts) for name, ts in per_call.items()}


def one_run_timer(path: str, overrides: list[str]):
    """``(call, examples per call)`` of the single run's train step, built as the loop builds it (compiled)."""
    import jax
    import numpy as np

    import fntrain as ft
    from fntrain import loop

    config = ft.load_config(ROOT / path, [*COMMON, *overrides])
    b = loop._build(config, [])
    resident = loop._resident_train_data(config.data, b.exp.splits.train, b.placement)
    step = loop._compiled_train_step(config, b.exp.loss_fn, b.optimizer, b.placement, b.state_sharding, resident)
    batch, n = config.data.batch_size, b.exp.splits.train.num_examples
    rng = np.random.default_rng(0)
    rows = [(rng.integers(0, n, batch).astype(np.int32), np.ones(batch, np.float32)) if b.pad
            else rng.integers(0, n, batch).astype(np.int32) for _ in range(8)]
    state = {"ts": b.state, "i": 0}

    def call():
        state["ts"], metrics = step(state["ts"], rows[state["i"] % len(rows)])
        state["i"] += 1
        return metrics

    for _ in range(3):
        jax.block_until_ready(call())
    return call, batch


def population_timer(path: str, overrides: list[str], size: int):
    """``(call, examples per call summed over the members)`` of the population's vmapped step (compiled)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import fntrain as ft
    from fntrain.cadence import Cadence
    from fntrain.loop import _takes_weights
    from fntrain.population import setup
    from fntrain.population.members import expand, grid_arrays
    from fntrain.population.step import NetShape, make_population_step

    rates = ", ".join(f"{1e-3 * (1 + i / size):.6g}" for i in range(size))
    config = ft.load_config(ROOT / path, [*COMMON, *overrides, f"population.grid={{optimizer.learning_rate: [{rates}]}}"])
    members = expand(config)
    exps = setup.member_experiments(members)
    first = exps[members[0].seed]
    data = setup.member_data(members, exps)
    it = setup.member_iterators(config, members[:1], exps, [ft.data.IteratorState()])[0]
    total = Cadence.from_config(config, it.steps_per_epoch).total_steps
    shape = NetShape(ft.builders.infer_num_outputs(first.splits, config.loss), tuple(first.splits.train.x.shape[1:]))
    ts = setup.initial_state(config, members, exps, shape, total)
    step = make_population_step(config, shape, total)
    batch, n = config.data.batch_size, first.splits.train.num_examples
    pad = first.loss is not None and _takes_weights(first.loss)
    rng = np.random.default_rng(0)
    rows = [(rng.integers(0, n, (size, batch)).astype(np.int32), np.ones((size, batch), np.float32)) if pad
            else rng.integers(0, n, (size, batch)).astype(np.int32) for _ in range(8)]
    values, active = grid_arrays(members), jnp.ones(size, bool)
    index, resident = jnp.asarray(data.index), jax.device_put(data.train)
    state = {"ts": ts, "i": 0}

    def call():
        state["ts"], metrics = step(state["ts"], rows[state["i"] % len(rows)], values, active, index, resident)
        state["i"] += 1
        return metrics

    for _ in range(3):
        jax.block_until_ready(call())
    return call, size * batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--sizes", default="1,4,8,16,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="least seconds per timing window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="smoke run: sizes 1,2, digits_mlp, short windows")
    args = parser.parse_args(argv)
    if args.tiny:
        args.workloads, args.sizes, args.seconds, args.windows = "digits_mlp", "1,2", 0.2, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    import jax

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}; {cpu_model()}; {os.cpu_count()} cores; jax {jax.__version__}; "
          f"{jax.devices()[0].platform}")
    print(f"# load average before: {load_average()}")
    header = "| workload | one run | " + " | ".join(f"M={m}" for m in sizes) + " |"
    rows = []
    for name in args.workloads.split(","):
        path, overrides = WORKLOADS[name]
        timers = {"one": one_run_timer(path, overrides), **{m: population_timer(path, overrides, m) for m in sizes}}
        rates = interleaved_rates(timers, args.seconds, args.windows)
        base = rates["one"]
        for m in sizes:
            print(f"# {name} M={m}: {rates[m]:,.0f} examples/s summed, {rates[m] / base:.2f} x one run", file=sys.stderr)
        cells = [f"{rates[m]:,.0f}/s ({rates[m] / base:.2f})" for m in sizes]
        rows.append(f"| {name} | {base:,.0f}/s | " + " | ".join(cells) + " |")
    print(f"# load average after: {load_average()}")
    print(header)
    print("| --- " * (len(sizes) + 2) + "|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
