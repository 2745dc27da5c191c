"""Training throughput of fntrain against a hand-written JAX step and other frameworks.

    python scripts/bench.py                       # all workloads and installed peers, tables at the end
    python scripts/bench.py --workloads W1 --windows 5 --peers flax-linen,torch
    python scripts/bench.py --peers none          # fntrain and the hand-written step only
    python scripts/bench.py --tiny                # a seconds-long smoke run (used by the tests)

Each workload runs in fresh processes, interleaved within each of ``--rounds`` rounds:
  * "plain": the hand-written step (jax.jit + optax + donation) in a process that never
    imports fntrain, i.e. what a user gets with the defaults of a plain Python process;
  * "fntrain": a process that imports fntrain (so fntrain's allocator setting is in force) and
    times, in the same process, the hand-written step again, fntrain's step with K=1 and
    K=`--fuse` fused steps, the end-to-end `fntrain.train` loop, and the K=1 step with bfloat16 compute (`fntrain.nn.mixed_precision`);
  * "peer:NAME": one process per peer framework (never imports fntrain) that trains the same
    network, loss (softmax cross-entropy on integer labels, mean), optimizer (Adam, lr 1e-3)
    and batch, written the way a user of that framework writes it. JAX-based peers also time
    the hand-written step in the same process, for a same-process ratio. The peers:
      flax-linen     linen module, flax TrainState, jax.jit with donation, optax
      flax-nnx       nnx module, nnx.Optimizer, nnx.jit
      equinox        eqx modules (per-example, vmapped), eqx.filter_jit, optax
      haiku          hk.transform, jax.jit with donation, optax
      torch          torch.nn modules, torch.optim.Adam, eager (threads = cores)
      torch-compile  the same with the model wrapped in torch.compile (needs a C++ compiler)
    W3 is NHWC in Flax and Haiku, NCHW in Equinox and torch (their native layouts; the batch
    is transposed once, outside the timing). W4 uses each framework's multi-head attention
    module (torch: F.scaled_dot_product_attention(is_causal=True) in a hand-written block).
    A peer whose package is not installed is skipped; its column shows n/a.
Rates are steady-state examples/s (medians over windows, after compilation, then medians
over rounds); ratios are to the plain hand-written step; "roofline" is model FLOPs/s over a
2048x2048 float32 matmul's FLOPs/s measured in the same process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

WORKLOADS = {
    "W1": "MLP 784-512-512-10, batch 128, Adam",
    "W2": "MLP 784-512-512-10, batch 1024, Adam",
    "W3": "CNN conv3x3x32, conv3x3x64, 2x2 avg pool, dense 128, dense 10 on 28x28x1, batch 128",
    "W4": "transformer LM vocab 256, seq 128, d 128, 2 layers, 4 heads, mlp 512, batch 32",
}


# --------------------------------------------------------------------------- workloads


def shapes(name: str, tiny: bool):
    """(batch size, x shape, number of classes, integer inputs?)."""
    if name in ("W1", "W2"):
        batch = 1024 if name == "W2" else 128
        return (8 if tiny else batch), (784,), 10, False
    if name == "W3":
        return (8 if tiny else 128), (28, 28, 1), 10, False
    return (2 if tiny else 32), (128,), 256, True


def hand_written(name: str):
    """The baseline: a plain-JAX network (init, forward) as a user would write it."""
    import jax
    import jax.numpy as jnp

    def dense_init(key, n_in, n_out):
        return {"w": jax.random.normal(key, (n_in, n_out)) * (2.0 / n_in) ** 0.5, "b": jnp.zeros(n_out)}

    if name in ("W1", "W2"):

        def init(key):
            k = jax.random.split(key, 3)
            return [dense_init(k[0], 784, 512), dense_init(k[1], 512, 512), dense_init(k[2], 512, 10)]

        def forward(p, x):
            for layer in p[:-1]:
                x = jax.nn.relu(x @ layer["w"] + layer["b"])
            return x @ p[-1]["w"] + p[-1]["b"]

        return init, forward
    if name == "W3":
        dn = ("NHWC", "HWIO", "NHWC")

        def init(key):
            k = jax.random.split(key, 4)
            return {
                "c1": jax.random.normal(k[0], (3, 3, 1, 32)) * 0.3,
                "c2": jax.random.normal(k[1], (3, 3, 32, 64)) * 0.06,
                "d1": dense_init(k[2], 14 * 14 * 64, 128),
                "d2": dense_init(k[3], 128, 10),
            }

        def forward(p, x):
            x = jax.nn.relu(jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME", dimension_numbers=dn))
            x = jax.nn.relu(jax.lax.conv_general_dilated(x, p["c2"], (1, 1), "SAME", dimension_numbers=dn))
            x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
            x = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["d1"]["w"] + p["d1"]["b"])
            return x @ p["d2"]["w"] + p["d2"]["b"]

        return init, forward

    d, heads, layers, mlp, vocab, seq = 128, 4, 2, 512, 256, 128

    def init(key):
        k = iter(jax.random.split(key, 4 + 6 * layers))
        p = {"embed": jax.random.normal(next(k), (vocab, d)), "pos": jax.random.normal(next(k), (seq, d)) * 0.02}
        p["blocks"] = [
            {
                "ln1": jnp.ones(d), "ln2": jnp.ones(d),
                "qkv": dense_init(next(k), d, 3 * d), "o": dense_init(next(k), d, d),
                "m1": dense_init(next(k), d, mlp), "m2": dense_init(next(k), mlp, d),
            }
            for _ in range(layers)
        ]
        p["ln"], p["head"] = jnp.ones(d), dense_init(next(k), d, vocab)
        return p

    def ln(x, g):
        m = x.mean(-1, keepdims=True)
        return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5) * g

    def forward(p, ids):
        b, t = ids.shape
        x = p["embed"][ids] + p["pos"][:t]
        mask = jnp.tril(jnp.ones((t, t), bool))
        for blk in p["blocks"]:
            h = ln(x, blk["ln1"]) @ blk["qkv"]["w"] + blk["qkv"]["b"]
            q, k_, v = jnp.split(h.reshape(b, t, 3, heads, d // heads), 3, axis=2)
            s = jnp.einsum("bqhd,bkhd->bhqk", q[:, :, 0], k_[:, :, 0]) / (d // heads) ** 0.5
            a = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1)
            o = jnp.einsum("bhqk,bkhd->bqhd", a, v[:, :, 0]).reshape(b, t, d)
            x = x + o @ blk["o"]["w"] + blk["o"]["b"]
            h = jax.nn.gelu(ln(x, blk["ln2"]) @ blk["m1"]["w"] + blk["m1"]["b"])
            x = x + h @ blk["m2"]["w"] + blk["m2"]["b"]
        return ln(x, p["ln"]) @ p["head"]["w"] + p["head"]["b"]

    return init, forward


def fntrain_net(name: str):
    import fntrain as ft

    nn = ft.nn
    if name in ("W1", "W2"):
        return nn.serial(nn.dense(512), nn.relu, nn.dense(512), nn.relu, nn.dense(10))
    if name == "W3":
        return nn.serial(
            nn.conv2d(32), nn.relu, nn.conv2d(64), nn.relu, nn.avg_pool(2), nn.flatten, nn.dense(128), nn.relu, nn.dense(10)
        )
    return nn.transformer_lm(256, 128, 128, 2, 4, 512)


def make_batch(name: str, tiny: bool, seed: int = 0):
    import numpy as np

    batch, x_shape, classes, integer = shapes(name, tiny)
    rng = np.random.default_rng(seed)
    if integer:
        ids = rng.integers(0, classes, size=(batch, x_shape[0] + 1)).astype(np.int32)
        return ids[:, :-1], ids[:, 1:]
    return rng.normal(size=(batch, *x_shape)).astype(np.float32), rng.integers(0, classes, batch).astype(np.int32)


# --------------------------------------------------------------------------- timing


def rate(step, state, batch, *, examples: int, steps: int, windows: int, sync=None, warmup: int = 1):
    """Median examples/s over ``windows`` windows of ``steps`` calls, after ``warmup`` calls.

    ``step(state, batch) -> (state, out)``; ``sync(out)`` waits for the work behind ``out``
    (default ``jax.block_until_ready``).
    """
    if sync is None:
        import jax

        sync = jax.block_until_ready
    for _ in range(warmup):
        state, out = step(state, batch)
    sync(out)
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            state, out = step(state, batch)
        sync(out)
        rates.append(steps * examples / (time.perf_counter() - start))
    return statistics.median(rates), state


def matmul_flops_per_second() -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
        out = f(a)
    out.block_until_ready()
    return 10 * 2 * 2048**3 / (time.perf_counter() - start)


def hand_written_step(name: str):
    import jax
    import optax

    init, forward = hand_written(name)
    opt = optax.adam(1e-3)

    def loss(params, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    def step(state, batch):
        params, opt_state = state
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    params = init(jax.random.key(0))
    return jax.jit(step, donate_argnums=0), (params, opt.init(params))


def step_flops(step, state, batch) -> float:
    try:
        cost = step.lower(state, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", 0.0))
    except Exception:
        return 0.0


def worker_plain(name: str, args) -> dict:
    import jax

    batch = jax.device_put(make_batch(name, args.tiny))
    step, state = hand_written_step(name)
    flops = step_flops(step, state, batch)
    examples = shapes(name, args.tiny)[0]
    r, _ = rate(step, state, batch, examples=examples, steps=args.steps, windows=args.windows)
    return {"hand": r, "flops_per_example": flops / examples, "matmul": matmul_flops_per_second()}


def worker_fntrain(name: str, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import fntrain as ft

    examples = shapes(name, args.tiny)[0]
    batch = jax.device_put(make_batch(name, args.tiny))
    results = {"allocator": ft.malloc.status}
    step, state = hand_written_step(name)
    results["hand_same_process"], _ = rate(step, state, batch, examples=examples, steps=args.steps, windows=args.windows)

    net = fntrain_net(name)
    opt = optax.adam(1e-3)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy, metric_fns={})
    params, model_state = net.init(jax.random.key(0), batch[0][:1])

    def fresh():
        return ft.TrainState.create(params, model_state, opt, key=jax.random.key(1))

    k1 = ft.make_train_step(loss_fn, opt)
    results["k1"], _ = rate(k1, jax.tree.map(jnp.copy, fresh()), batch, examples=examples, steps=args.steps, windows=args.windows)

    fuse = args.fuse
    stacked = jax.device_put(jax.tree.map(lambda a: np.stack([a] * fuse), make_batch(name, args.tiny)))
    kf = ft.make_train_step(loss_fn, opt, steps_per_dispatch=fuse)
    start = time.perf_counter()
    jax.block_until_ready(kf(jax.tree.map(jnp.copy, fresh()), stacked))
    results["fused_compile_s"] = time.perf_counter() - start
    results["fused"], _ = rate(
        kf, jax.tree.map(jnp.copy, fresh()), stacked, examples=examples * fuse,
        steps=max(1, args.steps // fuse), windows=args.windows,
    )
    results["loop"] = loop_rate(name, args, examples)

    # Mixed precision: bfloat16 compute over float32 master parameters (fntrain.nn.mixed_precision).
    bf16_loss_fn = ft.supervised_loss(ft.nn.mixed_precision(net, jnp.bfloat16), ft.losses.softmax_cross_entropy, metric_fns={})
    kb = ft.make_train_step(bf16_loss_fn, opt)
    results["k1_bf16"], _ = rate(kb, jax.tree.map(jnp.copy, fresh()), batch, examples=examples, steps=args.steps, windows=args.windows)
    return results


def loop_rate(name: str, args, batch_size: int) -> float:
    """Steady-state examples/s of the whole `fntrain.train` loop on this workload."""
    import io
    import tempfile

    import numpy as np

    import fntrain as ft

    x, y = make_batch(name, args.tiny)
    reps = 64
    data = ft.data.Arrays(np.concatenate([x] * reps), np.concatenate([y] * reps))

    @ft.register_dataset("bench_data")
    def bench_data():
        return data

    log_every = max(2, args.steps)
    overrides = [
        "data={name: bench_data, val_fraction: 0.0, test_fraction: 0.0, shuffle: false, batch_size: %d}" % batch_size,
        "model={name: bench_model}",
        "loop={kind: steps, num_steps: %d}" % (log_every * (args.windows + 1)),
        "log={every_steps: %d, progress: none}" % log_every,
        "checkpoint={every_steps: null}",
        "optimizer={name: adam, learning_rate: 1e-3}",
    ]

    @ft.register_model("bench_model")
    def bench_model(num_outputs):
        return fntrain_net(name)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.yaml")
        with open(path, "w") as f:
            f.write("seed: 0\n")
        config = ft.load_config(path, overrides + [f"output_dir={tmp}/run"])
        result = ft.train(config, stream=io.StringIO())
    return result.summary["steady_examples_per_second"]


# --------------------------------------------------------------------------- driver


def run_worker(kind: str, name: str, args) -> dict:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    command = [sys.executable, __file__, "--worker", kind, "--workloads", name, "--steps", str(args.steps),
               "--windows", str(args.windows), "--fuse", str(args.fuse)] + (["--tiny"] if args.tiny else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{kind} worker for {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1,W2,W3,W4")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per window (default: per workload)")
    parser.add_argument("--fuse", type=int, default=50, help="K for the fused step")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved plain/fntrain process pairs")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a smoke test")
    parser.add_argument("--worker", choices=("plain", "fntrain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.workloads.split(",")
    default_steps = {"W1": 200, "W2": 40, "W3": 10, "W4": 10}

    if args.worker:
        args.steps = args.steps or default_steps[names[0]]
        fn = worker_plain if args.worker == "plain" else worker_fntrain
        print(json.dumps(fn(names[0], args)))
        return

    rows = []
    fixed_steps = args.steps
    for name in names:
        args.steps = fixed_steps or (2 if args.tiny else default_steps[name])
        plain, ours = [], []
        for _ in range(args.rounds):  # interleaved, so drifts in machine load hit both alike
            plain.append(run_worker("plain", name, args))
            ours.append(run_worker("fntrain", name, args))
        med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
        base = med(plain, "hand")
        flops, peak = plain[0]["flops_per_example"], med(plain, "matmul")
        row = {"workload": name, "baseline": base, "roofline": base * flops / peak if flops else float("nan")}
        for key in ("hand_same_process", "k1", "fused", "loop"):
            row[key] = med(ours, key)
        row["fused_compile_s"] = med(ours, "fused_compile_s")
        row["allocator"] = ours[0]["allocator"]
        rows.append(row)

    print(f"\nexamples/s (medians), ratio to the hand-written step in a plain process; matmul roofline {peak / 1e9:.0f} GFLOP/s")
    header = "| workload | hand-written, plain process | hand-written, fntrain process | fntrain K=1 | fntrain K=%d | fntrain loop (K=1) | K=1 / same-process hand | loop / K=1 | fused compile |" % args.fuse
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for r in rows:
        b = r["baseline"]
        print(
            f"| {r['workload']} | {b:,.0f}/s ({100 * r['roofline']:.0f}% of roofline) | {r['hand_same_process'] / b:.2f} "
            f"| {r['k1'] / b:.2f} | {r['fused'] / b:.2f} | {r['loop'] / b:.2f} | {r['k1'] / r['hand_same_process']:.2f} "
            f"| {r['loop'] / r['k1']:.2f} | {r['fused_compile_s']:.1f} s |"
        )
    print(f"\nallocator in the fntrain process: {rows[0]['allocator']}; plain process: glibc malloc defaults")


if __name__ == "__main__":
    main()
