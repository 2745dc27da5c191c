"""conv2d on XLA:CPU against lax.conv_general_dilated, per layer and in the W3 train step.

    python scripts/bench_conv.py            # W3's two conv layers at batch 128, then the W3 step
    python scripts/bench_conv.py --fuse 10  # a shorter fused step

Layers: median milliseconds of forward and of forward + backward (gradients for input and
kernel) under jax.jit. Steps: examples/s of fntrain's W3 step at K=1 and K=--fuse fused steps
(make_train_step(steps_per_dispatch=K), batches stacked on a leading axis) and of the
hand-written step of scripts/bench.py, all in this one process; ratios are to the hand-written step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import fntrain as ft  # first: its malloc settings must precede XLA's threads
import jax
import jax.numpy as jnp
import numpy as np
import optax

import bench  # scripts/bench.py: the W3 networks, batch and timing loop

DN = ("NHWC", "HWIO", "NHWC")
LAYERS = {"conv3x3 1->32": (1, 32), "conv3x3 32->64": (32, 64)}  # W3's, on [128, 28, 28, C]


def median_ms(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def layer_times(conv, x, w) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of ``conv(x, w)``."""
    forward = jax.jit(conv)
    both = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2) / 2, argnums=(0, 1)))
    return median_ms(forward, x, w), median_ms(both, x, w)


def w3_rates(fuse: int) -> dict:
    """Examples/s of the hand-written W3 step and of fntrain's at K=1 and K=fuse; fused compile s."""
    batch = jax.device_put(bench.make_batch("W3", False))
    step, state = bench.hand_written_step("W3")
    out = {"hand-written (lax conv)": bench.rate(step, state, batch, examples=128, steps=5, windows=3)[0]}

    net, opt = bench.fntrain_net("W3"), optax.adam(1e-3)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy, metric_fns={})
    params, model_state = net.init(jax.random.key(0), batch[0][:1])

    def fresh():  # a private copy: the steps donate their input state
        return jax.tree.map(jnp.copy, ft.TrainState.create(params, model_state, opt, key=jax.random.key(1)))

    k1 = ft.make_train_step(loss_fn, opt)
    out["fntrain K=1"] = bench.rate(k1, fresh(), batch, examples=128, steps=5, windows=3)[0]
    stacked = jax.device_put(jax.tree.map(lambda a: np.stack([a] * fuse), bench.make_batch("W3", False)))
    kf = ft.make_train_step(loss_fn, opt, steps_per_dispatch=fuse)
    start = time.perf_counter()
    kf = kf.lower(fresh(), stacked).compile()
    out["compile_s"] = time.perf_counter() - start
    out[f"fntrain K={fuse}"] = bench.rate(kf, fresh(), stacked, examples=128 * fuse, steps=1, windows=3)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuse", type=int, default=50, help="K for the fused step")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{jax.devices()[0].device_kind}, {ft.malloc.status}\n")
    print("| layer, batch 128, 28x28 | lax fwd | fntrain fwd | lax fwd+bwd | fntrain fwd+bwd | speed-up fwd | speed-up fwd+bwd |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (c, f) in LAYERS.items():
        x = jnp.asarray(rng.normal(size=(128, 28, 28, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, c, f)) / np.sqrt(9 * c), jnp.float32)
        lax_f, lax_b = layer_times(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN), x, w)
        our_f, our_b = layer_times(lambda x, w: ft.nn.layers.conv2d_nhwc(x, w, (1, 1), "SAME"), x, w)
        print(f"| {name} | {lax_f:.1f} ms | {our_f:.1f} ms | {lax_b:.1f} ms | {our_b:.1f} ms | {lax_f / our_f:.2f}x | {lax_b / our_b:.2f}x |")

    rates = w3_rates(args.fuse)
    compile_s, hand = rates.pop("compile_s"), rates["hand-written (lax conv)"]
    print("\n| W3 train step, batch 128 | examples/s | ratio to hand-written |\n| --- | --- | --- |")
    for name, r in rates.items():
        print(f"| {name} | {r:,.0f} | {r / hand:.2f} |")
    print(f"\nfused K={args.fuse} step compile: {compile_s:.1f} s")


if __name__ == "__main__":
    main()
