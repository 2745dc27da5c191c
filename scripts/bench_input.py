"""The input pipeline alone against the train step: can the host feed the device?

    python scripts/bench_input.py                    # W1 and W3, data in memory and in a .npy file on disk
    python scripts/bench_input.py --grain            # also grain's per-example loader, for comparison
    python scripts/bench_input.py --tiny             # a short smoke run (used by the tests)

For each workload (W1: MLP 784-512-512-10 on float32 inputs [128, 784]; W3: the CNN of
scripts/bench.py on [128, 28, 28, 1]; batch 128, 10 classes, Adam) it times, in one process:

  * step: fntrain's jitted train step (``make_train_step``) on a batch already on the device,
    in steps/s;
  * pipeline: what the training loop does for each host batch when the data is not on the
    device (``fntrain.dispatch.dispatches``: the next rows of the shuffled epoch, the batch
    gathered, padded to full size with its weights and placed on the device), in batches/s,
    from memory (NumPy arrays) and from a ``.npy`` file on disk (``fntrain.data.load_npy``,
    rows read with pread);
  * with --grain, grain's own loader over the same file (``grain.MapDataset`` of examples,
    shuffled, batched, read by 2 threads with prefetching), as a user of grain writes it;
  * with --loop, W1 only: ``fntrain.train`` on the file (``data.on_device: false``), steady
    steps/s with ``data.prefetch`` 0 (batches made in the loop's thread) and 2 (a thread).

It prints a Markdown table: rates, and the pipeline's rate over the step's (the pipeline must
not be what limits a step: at least 3x). The file is written to --dir (a temporary directory
by default) and deleted afterwards; it was just written, so it is in the page cache.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fntrain as ft  # noqa: E402
from bench import fntrain_net  # noqa: E402  (the networks scripts/bench.py times)
from fntrain.cadence import Cadence  # noqa: E402
from fntrain.dispatch import dispatches  # noqa: E402
from fntrain.parallel import make_placement  # noqa: E402

BATCH, CLASSES = 128, 10
SHAPES = {"W1": (784,), "W3": (28, 28, 1)}


def write_npy(directory: Path, name: str, rows: int) -> tuple[Path, Path]:
    """x [rows, *shape] float32 and y [rows] int32 as .npy files, written in chunks."""
    shape = SHAPES[name]
    x_path, y_path = directory / f"{name}_x.npy", directory / f"{name}_y.npy"
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, *shape))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 8192):
        x[start : start + 8192] = rng.standard_normal(size=(min(8192, rows - start), *shape), dtype=np.float32)
    x.flush()
    del x
    np.save(y_path, rng.integers(0, CLASSES, rows).astype(np.int32))
    return x_path, y_path


def step_rate(name: str, seconds: float) -> float:
    """Steps/s of fntrain's train step on a fixed batch on the device."""
    net = fntrain_net(name)
    rng = np.random.default_rng(1)
    x = jax.device_put(rng.standard_normal(size=(BATCH, *SHAPES[name]), dtype=np.float32))
    y = jax.device_put(rng.integers(0, CLASSES, BATCH).astype(np.int32))
    params, state = net.init(jax.random.key(0), x)
    optimizer = optax.adam(1e-3)
    ts = ft.TrainState.create(params, state, optimizer, key=jax.random.key(1))
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy), optimizer)
    for _ in range(2):
        ts, metrics = step(ts, (x, y))
    jax.block_until_ready(metrics)
    return timed(lambda: step(ts, (x, y)), seconds, carry=True, state=ts, step=step, batch=(x, y))


def timed(fn, seconds: float, *, carry: bool = False, state=None, step=None, batch=None) -> float:
    """Calls per second over about ``seconds`` (a train step threads its state through)."""
    count, start = 0, time.perf_counter()
    while True:
        if carry:
            state, out = step(state, batch)
        else:
            out = fn()
        count += 1
        if count % 8 == 0 and time.perf_counter() - start > seconds:
            break
    jax.block_until_ready(out)
    return count / (time.perf_counter() - start)


def pipeline_rate(arrays: ft.data.Arrays, seconds: float) -> float:
    """Batches/s of the loop's host path: rows, gather, pad, device_put (one step per dispatch)."""
    placement = make_placement(1)
    iterator = ft.data.BatchIterator(arrays, BATCH, key=jax.random.key(2))
    cadence = Cadence(total_steps=10**9, steps_per_epoch=iterator.steps_per_epoch, log_every=10**9, by_epoch=False)
    gather = functools.partial(ft.data.gather_batch, arrays, pad_to=BATCH)
    upcoming = dispatches(iterator, cadence, 0, pad_to=BATCH, put=placement.global_batch, gather=gather)
    for _ in range(3):
        next(upcoming)
    return timed(lambda: next(upcoming).batch, seconds)


def grain_rate(x_path: Path, y_path: Path, seconds: float) -> float | None:
    """Batches/s of grain's loader over the file: shuffled examples, batched, 2 reader threads."""
    try:
        import grain
    except ImportError:
        return None

    class Examples:  # a grain random-access source: one example per index, from the map
        def __init__(self):
            self.x, self.y = np.load(x_path, mmap_mode="r"), np.load(y_path, mmap_mode="r")

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return np.asarray(self.x[i]), self.y[i]

    dataset = grain.MapDataset.source(Examples()).shuffle(seed=0).repeat().batch(BATCH)
    batches = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)))
    placement = make_placement(1)
    for _ in range(3):
        next(batches)
    return timed(lambda: jax.device_put(next(batches), placement.batch), seconds)


def loop_rate(x_path: Path, y_path: Path, prefetch: int, steps: int, directory: str) -> float:
    """Steady steps/s of ``fntrain.train`` on the W1 file with ``data.prefetch = prefetch``."""
    import io

    raw = {
        "seed": 0, "output_dir": f"{directory}/loop{prefetch}",
        "data": {"name": "npy", "x_path": str(x_path), "y_path": str(y_path), "batch_size": BATCH, "val_fraction": 0.0,
                 "test_fraction": 0.0, "on_device": False, "prefetch": prefetch},
        "model": {"name": "mlp", "hidden_sizes": [512, 512]},
        "optimizer": {"name": "adam", "learning_rate": 1e-3, "schedule": {"name": "constant"}},
        "loop": {"kind": "steps", "num_steps": steps}, "log": {"every_steps": steps // 10, "progress": "none"},
        "checkpoint": {"every_steps": None},
    }
    config = ft.config.validate(raw, "bench_input")
    summary = ft.train(config, stream=io.StringIO(), overwrite=True).summary
    return summary["steady_examples_per_second"] / BATCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1,W3")
    parser.add_argument("--rows", type=int, default=60_000, help="examples in the data (default: MNIST's 60,000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per measurement")
    parser.add_argument("--dir", default=None, help="where the .npy files go (default: a temporary directory)")
    parser.add_argument("--grain", action="store_true", help="also time grain's per-example loader (if installed)")
    parser.add_argument("--loop", action="store_true", help="also time fntrain.train on the W1 file, prefetch 0 and 2")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.seconds = 1024, 0.2
    rows, loops = [], {}
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for name in args.workloads.split(","):
            x_path, y_path = write_npy(Path(directory), name, args.rows)
            on_disk = ft.data.load_npy(x_path, y_path)
            in_memory = ft.data.Arrays(np.load(x_path), np.load(y_path))
            step = step_rate(name, args.seconds)
            memory = pipeline_rate(in_memory, args.seconds)
            disk = pipeline_rate(on_disk, args.seconds)
            grain = grain_rate(x_path, y_path, args.seconds) if args.grain else None
            rows.append((name, step, memory, disk, grain))
            if args.loop and name == "W1":
                loops = {k: loop_rate(x_path, y_path, k, 40 if args.tiny else 2000, directory) for k in (0, 2)}
            for path in (x_path, y_path):
                os.remove(path)
    print(f"| workload | train step | pipeline, memory | pipeline, .npy file | "
          f"{'grain, .npy file | ' if args.grain else ''}memory / step | file / step |")
    print(f"| --- | --- | --- | --- | {'--- | ' if args.grain else ''}--- | --- |")
    for name, step, memory, disk, grain in rows:
        grain_cell = ("n/a (not installed)" if grain is None else f"{grain:,.0f}/s ({grain / step:.1f}x)") + " | "
        print(f"| {name} | {step:,.1f}/s | {memory:,.0f}/s | {disk:,.0f}/s | {grain_cell if args.grain else ''}"
              f"{memory / step:.1f}x | {disk / step:.1f}x |")
    if args.loop and "W1" in args.workloads:
        step = rows[[r[0] for r in rows].index("W1")][1]
        print()
        print(f"W1 loop on the .npy file: {loops[0]:,.1f} steps/s with data.prefetch 0, {loops[2]:,.1f} with 2 "
              f"(the step alone: {step:,.1f}/s)")
    slow = [name for name, step, memory, disk, _ in rows if min(memory, disk) < 3 * step]
    print()
    print("the pipeline is at least 3x the step everywhere" if not slow else f"the pipeline is under 3x the step: {slow}")


if __name__ == "__main__":
    main()
