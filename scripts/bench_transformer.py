"""W4 transformer train step and its parts, as ratios to the hand-written JAX baseline.

    python scripts/bench_transformer.py            # the table (a few minutes on 2 cores)
    python scripts/bench_transformer.py --fuse 10  # a shorter fused run

Everything runs in one process, interleaved over ``--rounds`` rounds so that drifts in
machine load hit all rows alike. Rows:
  * the whole step: hand-written (``scripts/bench.py``'s W4 ``jax.jit`` + optax + donation
    step), fntrain K=1 and fntrain K=``--fuse`` (one ``lax.scan``; batch leaves stacked
    with a leading axis of K);
  * the gradient of fntrain's loss alone, and of its main parts at W4 shapes: attention
    (``multi_head_attention``), the MLP (dense, gelu, dense), layer norm, embedding, and the
    output head with the loss.
A part's ratio is the hand-written step's time over the part's time (so a part with
ratio 5 costs a fifth of the baseline step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the baseline lives there; one copy of it)

import fntrain as ft  # noqa: E402

B, T, D, H, MLP, VOCAB = 32, 128, 128, 4, 512, 256


def seconds_per_call(fn, args, calls: int) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def stepper(step, state):
    """A callable ``() -> out`` that threads a donated train state through ``step``."""
    box = [state]

    def call(batch):
        box[0], out = step(box[0], batch)
        return out

    return call


def part_grads():
    """``{name: (jitted grad fn, args)}`` for the parts of the fntrain W4 model."""
    nn = ft.nn
    keys = iter(jax.random.split(jax.random.key(0), 8))
    x = jax.random.normal(next(keys), (B, T, D))
    ids = jax.random.randint(next(keys), (B, T), 0, VOCAB)

    def grad_of(module, inp, wrt_input=True):
        params, _ = module.init(next(keys), inp)

        def loss(p, z):
            y = module.apply(p, {}, z)[0]
            return 0.5 * jnp.sum(y * y)

        return jax.jit(jax.grad(loss, argnums=(0, 1) if wrt_input else 0)), (params, inp)

    mlp = nn.serial(nn.dense(MLP), nn.gelu, nn.dense(D))
    head = nn.dense(VOCAB)
    head_params, _ = head.init(next(keys), x)

    def head_loss(p, z):
        return ft.losses.softmax_cross_entropy(head.apply(p, {}, z)[0], ids)

    return {
        "attention (2 of these)": grad_of(nn.multi_head_attention(H, causal=True), x),
        "mlp: dense, gelu, dense (2)": grad_of(mlp, x),
        "layer_norm (5)": grad_of(nn.layer_norm(), x),
        "embedding (1)": grad_of(nn.embedding(VOCAB, D), ids, wrt_input=False),
        "head + loss (1)": (jax.jit(jax.grad(head_loss, argnums=(0, 1))), (head_params, x)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuse", type=int, default=50, help="K of the fused step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5, help="K=1 steps per timing")
    args = parser.parse_args()

    batch = jax.device_put(bench.make_batch("W4", False))
    stacked = jax.device_put(jax.tree.map(lambda a: np.stack([a] * args.fuse), bench.make_batch("W4", False)))
    hand_step, hand_state = bench.hand_written_step("W4")

    net, opt = bench.fntrain_net("W4"), optax.adam(1e-3)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy, metric_fns={})
    params, model_state = net.init(jax.random.key(0), batch[0][:1])

    def fresh():
        return jax.tree.map(jnp.copy, ft.TrainState.create(params, model_state, opt, key=jax.random.key(1)))

    fused = ft.make_train_step(loss_fn, opt, steps_per_dispatch=args.fuse)
    start = time.perf_counter()
    fused_call = stepper(fused, fresh())
    jax.block_until_ready(fused_call(stacked))
    compile_s = time.perf_counter() - start

    # (name, fn, args, calls, steps per call)
    rows = [
        ("hand-written step", stepper(hand_step, hand_state), (batch,), args.calls, 1),
        ("fntrain step, K=1", stepper(ft.make_train_step(loss_fn, opt), fresh()), (batch,), args.calls, 1),
        (f"fntrain step, K={args.fuse} fused", fused_call, (stacked,), 1, args.fuse),
        ("fntrain loss gradient", jax.jit(jax.grad(lambda p: loss_fn(p, model_state, batch, None)[0])), (params,), args.calls, 1),
    ]
    rows += [(name, fn, fn_args, 4 * args.calls, 1) for name, (fn, fn_args) in part_grads().items()]

    times = {name: [] for name, *_ in rows}
    for _ in range(args.rounds):
        for name, fn, fn_args, calls, steps in rows:
            times[name].append(seconds_per_call(fn, fn_args, calls) / steps)
    per_step = {name: statistics.median(ts) for name, ts in times.items()}
    base = per_step["hand-written step"]

    print(f"W4: {bench.WORKLOADS['W4']}; medians of {args.rounds} interleaved rounds; jax {jax.__version__}, "
          f"{jax.devices()[0].device_kind}")
    print("| what | ms per step | examples/s | ratio to hand-written step |")
    print("| --- | --- | --- | --- |")
    for name, *_ in rows:
        ms = 1e3 * per_step[name]
        rate = f"{B / per_step[name]:,.0f}" if "step" in name else ""
        print(f"| {name} | {ms:.1f} | {rate} | {base / per_step[name]:.2f} |")
    print(f"\nfused K={args.fuse} compile + first dispatch: {compile_s:.1f} s")


if __name__ == "__main__":
    main()
