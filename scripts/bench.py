"""Training throughput of fntrain against a hand-written JAX step and other frameworks.

    python scripts/bench.py                       # all workloads and installed peers, tables at the end
    python scripts/bench.py --workloads W1 --windows 5 --peers flax-linen,torch
    python scripts/bench.py --peers none          # fntrain and the hand-written step only
    python scripts/bench.py --tiny                # a short smoke run (used by the tests)

Each workload runs in fresh processes, interleaved within each of ``--rounds`` rounds:
  * "plain": the hand-written step (jax.jit + optax + donation) in a process that never
    imports fntrain, i.e. what a user gets with the defaults of a plain Python process;
  * "fntrain": a process that imports fntrain (so fntrain's allocator setting is in force) and
    times, in the same process, the hand-written step again, fntrain's step with K=1 and
    K=`--fuse` fused steps, the end-to-end `fntrain.train` loop followed by the K=1 step
    again (the loop is compared with the mean of the two K=1 timings around it), and the K=1
    step with bfloat16 compute (`fntrain.nn.mixed_precision`); it reports the convolution
    kernels XLA:CPU was given (`fntrain/nn/conv_choice.py`) and the allocator setting;
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
    As in the hand-written network, W3's convolutions have no bias, W4's layer norms have no
    offset and eps 1e-5, its GELU is the tanh approximation and its position embedding starts
    at N(0, 0.02^2); everything else (initialisers included) is the framework's default.
    A peer whose package is not installed is skipped; its column shows n/a. Before timing,
    each peer takes 5 steps on its fixed batch (up to 30 while its loss is still above the
    first), which double as its warm-up (jit, torch.compile): the first loss must be near
    ln(classes) and the last one lower, or the peer fails (`check_learns`). A peer that
    fails prints why to stderr and shows "failed".
Rates are steady-state examples/s (medians over windows, after compilation, then medians
over rounds); ratios are to the plain hand-written step; "roofline" is model FLOPs/s over a
2048x2048 float32 matmul's FLOPs/s measured in the same process. The tables are Markdown: the
fntrain table, then the peer table (fntrain's K=1 and fused steps next to each peer) with a
line per workload saying whether fntrain's best configuration (K=1, fused or the loop)
beats every peer measured, and its fraction of the matmul roofline.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
    results["loop"], results["loop_dispatch"] = loop_rate(name, args, examples)
    # K=1 again right after the loop: the loop is compared with the mean of the two K=1 timings
    # around it, so a drift in the machine's speed during the worker hits both alike.
    after, _ = rate(k1, jax.tree.map(jnp.copy, fresh()), batch, examples=examples, steps=args.steps, windows=args.windows)
    results["loop_over_k1"] = results["loop"] / ((results["k1"] + after) / 2)

    # Mixed precision: bfloat16 compute over float32 master parameters (fntrain.nn.mixed_precision).
    bf16_loss_fn = ft.supervised_loss(ft.nn.mixed_precision(net, jnp.bfloat16), ft.losses.softmax_cross_entropy, metric_fns={})
    kb = ft.make_train_step(bf16_loss_fn, opt)
    results["k1_bf16"], _ = rate(kb, jax.tree.map(jnp.copy, fresh()), batch, examples=examples, steps=args.steps, windows=args.windows)
    results["conv_kernels"] = ft.nn.conv_choice.choices()  # XLA:CPU's kernel per convolution shape
    return results


LOOP_WINDOWS = 16  # log windows of the loop's run: long enough for auto fusion to pay
LOOP_SETTLING = 5  # ...of which the first are not timed: compilations and auto's two timings


def loop_rate(name: str, args, batch_size: int) -> tuple[float, dict]:
    """Steady-state examples/s of the whole `fntrain.train` loop on this workload, and what
    `loop.steps_per_dispatch: auto` chose: the median over log windows once the choice is made
    (`LOOP_SETTLING`), the statistic `rate` gives the bare steps."""
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
        "loop={kind: steps, num_steps: %d}" % (log_every * max(LOOP_WINDOWS, LOOP_SETTLING + args.windows)),
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
        logs = LogTimes()
        ft.train(config, stream=io.StringIO(), callbacks=[logs])
        with open(os.path.join(tmp, "run", "summary.json")) as f:
            chosen = json.load(f)["steps_per_dispatch"]
    return logs.median_rate(batch_size, skip=LOOP_SETTLING), chosen


class LogTimes:
    """A loop callback that notes when each training log line is written: the loop fetches
    the window's metrics first, so the device has finished every step up to it."""

    def __init__(self):
        self.marks: list[tuple[int, float]] = []

    def on_log(self, step, split, metrics):
        if split == "train":
            self.marks.append((step, time.perf_counter()))

    def median_rate(self, batch_size: int, skip: int = 1) -> float:
        """Median examples/s over the windows after the first ``skip``, as `rate`."""
        marks = self.marks[skip - 1:]
        pairs = zip(marks, marks[1:])
        return statistics.median((s1 - s0) * batch_size / (t1 - t0) for (s0, t0), (s1, t1) in pairs)


# --------------------------------------------------------------------------- peers

# Each peer builder takes (workload name, numpy batch) and returns (step, state, batch, sync):
# ``step(state, batch) -> (state, loss)`` is one training step written the way a user of that
# framework writes it, ``batch`` is already in the framework's own arrays and layout, and
# ``sync(loss)`` waits for the step's work. All train the hand-written network of `hand_written`.

PEERS = ("flax-linen", "flax-nnx", "equinox", "haiku", "torch", "torch-compile")
PEER_PACKAGES = {"flax-linen": "flax", "flax-nnx": "flax", "equinox": "equinox", "haiku": "haiku",
                 "torch": "torch", "torch-compile": "torch"}
JAX_PEERS = ("flax-linen", "flax-nnx", "equinox", "haiku")
SANITY_STEPS = 5  # steps on the fixed batch before timing, checked by `check_learns`
SANITY_MAX_STEPS = 30  # ...continued up to this many while the loss is still above its start
LM = dict(vocab=256, seq=128, d=128, heads=4, layers=2, mlp=512)  # W4, as in `hand_written`


def peer_available(peer: str) -> bool:
    """Whether the peer's package is installed (and, for torch.compile, a C++ compiler)."""
    if importlib.util.find_spec(PEER_PACKAGES[peer]) is None:
        return False
    return peer != "torch-compile" or shutil.which(os.environ.get("CXX", "g++")) is not None


def flax_linen_peer(name: str, batch):
    import functools

    import flax.linen as nn
    import jax
    import optax
    from flax.training import train_state

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(512)(x))
            x = nn.relu(nn.Dense(512)(x))
            return nn.Dense(10)(x)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):  # x: [batch, 28, 28, 1]
            x = nn.relu(nn.Conv(32, (3, 3), use_bias=False)(x))
            x = nn.relu(nn.Conv(64, (3, 3), use_bias=False)(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            h = nn.LayerNorm(epsilon=1e-5, use_bias=False)(x)
            x = x + nn.MultiHeadDotProductAttention(num_heads=LM["heads"])(h, mask=mask)
            h = nn.LayerNorm(epsilon=1e-5, use_bias=False)(x)
            return x + nn.Dense(LM["d"])(nn.gelu(nn.Dense(LM["mlp"])(h)))

    class TransformerLM(nn.Module):
        @nn.compact
        def __call__(self, ids):  # ids: [batch, seq] int32
            pos = self.param("pos", nn.initializers.normal(0.02), (LM["seq"], LM["d"]))
            x = nn.Embed(LM["vocab"], LM["d"])(ids) + pos[: ids.shape[1]]
            mask = nn.make_causal_mask(ids)
            for _ in range(LM["layers"]):
                x = Block()(x, mask)
            return nn.Dense(LM["vocab"])(nn.LayerNorm(epsilon=1e-5, use_bias=False)(x))

    model = {"W1": MLP, "W2": MLP, "W3": CNN, "W4": TransformerLM}[name]()
    x, y = jax.device_put(batch)
    params = model.init(jax.random.key(0), x)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        x, y = batch

        def loss_fn(params):
            logits = state.apply_fn({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    return train_step, state, (x, y), jax.block_until_ready


def flax_nnx_peer(name: str, batch):
    import jax
    import optax
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(784, 512, rngs=rngs)
            self.l2 = nnx.Linear(512, 512, rngs=rngs)
            self.l3 = nnx.Linear(512, 10, rngs=rngs)

        def __call__(self, x):
            return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(1, 32, (3, 3), use_bias=False, rngs=rngs)
            self.c2 = nnx.Conv(32, 64, (3, 3), use_bias=False, rngs=rngs)
            self.d1 = nnx.Linear(14 * 14 * 64, 128, rngs=rngs)
            self.d2 = nnx.Linear(128, 10, rngs=rngs)

        def __call__(self, x):  # x: [batch, 28, 28, 1]
            x = nnx.avg_pool(nnx.relu(self.c2(nnx.relu(self.c1(x)))), (2, 2), strides=(2, 2))
            return self.d2(nnx.relu(self.d1(x.reshape(x.shape[0], -1))))

    class Block(nnx.Module):
        def __init__(self, rngs):
            d = LM["d"]
            self.ln1 = nnx.LayerNorm(d, epsilon=1e-5, use_bias=False, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=LM["heads"], in_features=d, decode=False, rngs=rngs)
            self.ln2 = nnx.LayerNorm(d, epsilon=1e-5, use_bias=False, rngs=rngs)
            self.m1 = nnx.Linear(d, LM["mlp"], rngs=rngs)
            self.m2 = nnx.Linear(LM["mlp"], d, rngs=rngs)

        def __call__(self, x, mask):
            x = x + self.attn(self.ln1(x), mask=mask)
            return x + self.m2(nnx.gelu(self.m1(self.ln2(x))))

    class TransformerLM(nnx.Module):
        def __init__(self, rngs):
            d = LM["d"]
            self.embed = nnx.Embed(LM["vocab"], d, rngs=rngs)
            self.pos = nnx.Param(jax.random.normal(rngs.params(), (LM["seq"], d)) * 0.02)
            self.blocks = nnx.List([Block(rngs) for _ in range(LM["layers"])])
            self.ln = nnx.LayerNorm(d, epsilon=1e-5, use_bias=False, rngs=rngs)
            self.head = nnx.Linear(d, LM["vocab"], rngs=rngs)

        def __call__(self, ids):  # ids: [batch, seq] int32
            x = self.embed(ids) + self.pos[: ids.shape[1]]
            mask = nnx.make_causal_mask(ids)
            for block in self.blocks:
                x = block(x, mask)
            return self.head(self.ln(x))

    model = {"W1": MLP, "W2": MLP, "W3": CNN, "W4": TransformerLM}[name](nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def step(state, batch):
        return state, train_step(*state, *batch)

    return step, (model, optimizer), tuple(jax.device_put(batch)), jax.block_until_ready


def equinox_peer(name: str, batch):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    # Equinox modules act on one example; the batch is vmapped.
    keys = iter(jax.random.split(jax.random.key(0), 16))
    if name in ("W1", "W2"):
        model = eqx.nn.MLP(784, 10, width_size=512, depth=2, activation=jax.nn.relu, key=next(keys))
    elif name == "W3":
        model = eqx.nn.Sequential([  # x: [1, 28, 28] (NCHW without the batch)
            eqx.nn.Conv2d(1, 32, 3, padding=1, use_bias=False, key=next(keys)),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(32, 64, 3, padding=1, use_bias=False, key=next(keys)),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.AvgPool2d(2, stride=2),
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(64 * 14 * 14, 128, key=next(keys)),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(128, 10, key=next(keys)),
        ])
    else:

        class Block(eqx.Module):
            ln1: eqx.nn.LayerNorm
            attn: eqx.nn.MultiheadAttention
            ln2: eqx.nn.LayerNorm
            m1: eqx.nn.Linear
            m2: eqx.nn.Linear

            def __init__(self, key):
                k1, k2, k3 = jax.random.split(key, 3)
                d = LM["d"]
                self.ln1 = eqx.nn.LayerNorm(d, eps=1e-5, use_bias=False)
                self.attn = eqx.nn.MultiheadAttention(
                    LM["heads"], d, use_query_bias=True, use_key_bias=True, use_value_bias=True,
                    use_output_bias=True, key=k1,
                )
                self.ln2 = eqx.nn.LayerNorm(d, eps=1e-5, use_bias=False)
                self.m1 = eqx.nn.Linear(d, LM["mlp"], key=k2)
                self.m2 = eqx.nn.Linear(LM["mlp"], d, key=k3)

            def __call__(self, x, mask):  # x: [seq, d]
                h = jax.vmap(self.ln1)(x)
                x = x + self.attn(h, h, h, mask=mask)
                h = jax.vmap(self.m1)(jax.vmap(self.ln2)(x))
                return x + jax.vmap(self.m2)(jax.nn.gelu(h))

        class TransformerLM(eqx.Module):
            embed: eqx.nn.Embedding
            pos: jax.Array
            blocks: list
            ln: eqx.nn.LayerNorm
            head: eqx.nn.Linear

            def __init__(self, key):
                keys = jax.random.split(key, 3 + LM["layers"])
                self.embed = eqx.nn.Embedding(LM["vocab"], LM["d"], key=keys[0])
                self.pos = jax.random.normal(keys[1], (LM["seq"], LM["d"])) * 0.02
                self.blocks = [Block(k) for k in keys[3:]]
                self.ln = eqx.nn.LayerNorm(LM["d"], eps=1e-5, use_bias=False)
                self.head = eqx.nn.Linear(LM["d"], LM["vocab"], key=keys[2])

            def __call__(self, ids):  # ids: [seq] int32
                t = ids.shape[0]
                x = jax.vmap(self.embed)(ids) + self.pos[:t]
                mask = jnp.tril(jnp.ones((t, t), bool))
                for block in self.blocks:
                    x = block(x, mask)
                return jax.vmap(self.head)(jax.vmap(self.ln)(x))

        model = TransformerLM(next(keys))

    optim = optax.adam(1e-3)
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model, x, y):
        logits = jax.vmap(model)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @eqx.filter_jit
    def make_step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    def step(state, batch):
        model, opt_state, loss = make_step(*state, *batch)
        return (model, opt_state), loss

    x, y = batch
    if name == "W3":
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW, once, outside the timing
    return step, (model, opt_state), tuple(jax.device_put((x, y))), jax.block_until_ready


def haiku_peer(name: str, batch):
    import functools

    import haiku as hk
    import jax
    import jax.numpy as jnp
    import optax

    def forward(x):
        if name in ("W1", "W2"):
            return hk.nets.MLP([512, 512, 10])(x)
        if name == "W3":  # x: [batch, 28, 28, 1]
            x = jax.nn.relu(hk.Conv2D(32, 3, with_bias=False)(x))
            x = jax.nn.relu(hk.Conv2D(64, 3, with_bias=False)(x))
            x = hk.avg_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="VALID")
            x = jax.nn.relu(hk.Linear(128)(hk.Flatten()(x)))
            return hk.Linear(10)(x)
        d, t = LM["d"], x.shape[1]  # x: [batch, seq] int32
        pos = hk.get_parameter("pos", [LM["seq"], d], init=hk.initializers.RandomNormal(0.02))
        h = hk.Embed(LM["vocab"], d)(x) + pos[:t]
        mask = jnp.tril(jnp.ones((1, 1, t, t)))
        for _ in range(LM["layers"]):
            a = hk.LayerNorm(-1, create_scale=True, create_offset=False, eps=1e-5)(h)
            attn = hk.MultiHeadAttention(LM["heads"], d // LM["heads"], w_init=hk.initializers.VarianceScaling(1.0))
            h = h + attn(a, a, a, mask=mask)
            a = hk.LayerNorm(-1, create_scale=True, create_offset=False, eps=1e-5)(h)
            h = h + hk.Linear(d)(jax.nn.gelu(hk.Linear(LM["mlp"])(a)))
        h = hk.LayerNorm(-1, create_scale=True, create_offset=False, eps=1e-5)(h)
        return hk.Linear(LM["vocab"])(h)

    net = hk.without_apply_rng(hk.transform(forward))
    optimiser = optax.adam(1e-3)
    x, y = jax.device_put(batch)
    params = net.init(jax.random.PRNGKey(0), x)

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(net.apply(params, x), y).mean()

    @functools.partial(jax.jit, donate_argnums=0)
    def update(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return update, (params, optimiser.init(params)), (x, y), jax.block_until_ready


def torch_peer(name: str, batch, *, compile: bool = False):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, d, heads, mlp):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
            self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.m1, self.m2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

        def forward(self, x):  # x: [batch, seq, d]
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [batch, heads, seq, d/heads]
            x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
            return x + self.m2(F.gelu(self.m1(self.ln2(x)), approximate="tanh"))

    class TransformerLM(nn.Module):
        def __init__(self, vocab, seq, d, heads, layers, mlp):
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
            self.blocks = nn.ModuleList([Block(d, heads, mlp) for _ in range(layers)])
            self.ln = nn.LayerNorm(d, bias=False)
            self.head = nn.Linear(d, vocab)

        def forward(self, ids):  # ids: [batch, seq] int64
            x = self.embed(ids) + self.pos[: ids.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    if name in ("W1", "W2"):
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    elif name == "W3":
        model = nn.Sequential(  # NCHW
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.ReLU(),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64 * 14 * 14, 128), nn.ReLU(), nn.Linear(128, 10),
        )
    else:
        model = TransformerLM(**LM)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if compile:
        model = torch.compile(model)

    x, y = batch
    if name == "W3":
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW, once, outside the timing
    x = torch.from_numpy(x.copy())
    y = torch.from_numpy(y.astype("int64"))

    def step(state, batch):
        model, optimizer = state
        x, y = batch
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        optimizer.step()
        return state, loss.detach()

    return step, (model, optimizer), (x, y), lambda loss: float(loss)


PEER_BUILDERS = {
    "flax-linen": flax_linen_peer,
    "flax-nnx": flax_nnx_peer,
    "equinox": equinox_peer,
    "haiku": haiku_peer,
    "torch": torch_peer,
    "torch-compile": lambda name, batch: torch_peer(name, batch, compile=True),
}


def check_learns(peer: str, name: str, losses: list[float], classes: int) -> None:
    """Raises if a step does not look like training: loss must start near ln(classes) and fall.

    The initial-loss bound is loose (0.5x to 1.6x ln(classes)) because each framework keeps
    its own default initialisation; a wrong loss (summed, not averaged; wrong labels) or a
    step that never updates the parameters still fails it.
    """
    import math

    chance = math.log(classes)
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"{peer} on {name}: non-finite loss {losses}")
    if not 0.5 * chance < losses[0] < 1.6 * chance:
        raise RuntimeError(f"{peer} on {name}: initial loss {losses[0]:.3f}, expected near ln({classes}) = {chance:.3f}")
    if not losses[-1] < losses[0]:
        raise RuntimeError(f"{peer} on {name}: loss did not decrease on a fixed batch: {losses}")


def worker_peer(peer: str, name: str, args) -> dict:
    """Times one peer framework; JAX peers also time the hand-written step in this process."""
    examples, _, classes, _ = shapes(name, args.tiny)
    results = {}
    if peer in JAX_PEERS:
        import jax

        jbatch = jax.device_put(make_batch(name, args.tiny))
        step, state = hand_written_step(name)
        results["hand_same_process"], _ = rate(step, state, jbatch, examples=examples, steps=args.steps, windows=args.windows)

    step, state, batch, sync = PEER_BUILDERS[peer](name, make_batch(name, args.tiny))
    # The first steps compile (jit, torch.compile) and check that this is a training step.
    start = time.perf_counter()
    state, out = step(state, batch)
    sync(out)
    results["compile_s"] = time.perf_counter() - start
    losses = [float(out)]
    # Some default initialisations (flax and haiku convolutions on W3) make Adam's first
    # steps overshoot, so a peer gets up to SANITY_MAX_STEPS steps to go below its start.
    while len(losses) < SANITY_STEPS or (losses[-1] >= losses[0] and len(losses) < SANITY_MAX_STEPS):
        state, out = step(state, batch)
        losses.append(float(out))
    check_learns(peer, name, losses, classes)
    results["losses"] = losses
    results["rate"], _ = rate(step, state, batch, examples=examples, steps=args.steps, windows=args.windows, sync=sync)
    return results


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


def parse_peers(text: str) -> list[str]:
    """``--peers``: "all" (every peer; those not installed show n/a), "none", or a comma list."""
    if text == "all":
        return list(PEERS)
    if text == "none":
        return []
    peers = text.split(",")
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}; expected all, none or some of {', '.join(PEERS)}")
    return peers


def measure(name: str, peers: list[str], args) -> dict:
    """One table row: medians over ``args.rounds`` rounds of fresh, interleaved processes."""
    available = [p for p in peers if peer_available(p)]
    plain, ours, theirs = [], [], {p: [] for p in available}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit all alike
        plain.append(run_worker("plain", name, args))
        ours.append(run_worker("fntrain", name, args))
        for peer in available:
            try:
                theirs[peer].append(run_worker(f"peer:{peer}", name, args))
            except Exception as error:  # a broken peer must not end the run
                print(f"peer {peer} on {name}: {error}", file=sys.stderr)
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    base = med(plain, "hand")
    flops, peak = plain[0]["flops_per_example"], med(plain, "matmul")
    row = {"workload": name, "baseline": base, "peak": peak,
           "roofline": base * flops / peak if flops else float("nan")}
    for key in ("hand_same_process", "k1", "fused", "loop", "loop_over_k1", "k1_bf16", "fused_compile_s"):
        row[key] = med(ours, key)
    row["allocator"] = ours[0]["allocator"]
    row["conv_kernels"] = ours[-1]["conv_kernels"]
    row["loop_dispatch"] = [r["loop_dispatch"] for r in ours]
    row["peers"] = {}
    for peer in peers:
        runs = theirs.get(peer)
        if runs is None:
            row["peers"][peer] = "n/a"
        elif not runs:
            row["peers"][peer] = "failed"
        else:
            row["peers"][peer] = {
                "rate": med(runs, "rate"),
                "hand_same_process": med(runs, "hand_same_process") if peer in JAX_PEERS else None,
                "compile_s": med(runs, "compile_s"),
                "losses": runs[0]["losses"],
            }
    return row


def describe_dispatch(chosen) -> str:
    """The loop's `steps_per_dispatch` from its summary.json, in words."""
    if not isinstance(chosen, dict):
        return f"K={chosen}"
    timed = f" (single {chosen['single_step_ms']} ms" if chosen["single_step_ms"] is not None else " (not timed"
    tried = f", fused {chosen['fused_step_ms']} ms)" if chosen["fused_step_ms"] is not None else ")"
    return f"K={chosen['chosen']}{timed}{tried}"


def machine() -> str:
    """CPU model, cores, the SIMD flags that matter to XLA:CPU, and jax's version."""
    import platform

    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "avx512_vnni") if f in flags]
    return (f"{model}, {os.cpu_count()} cores, flags {' '.join(simd) or 'none of avx2/avx512'}, "
            f"Python {platform.python_version()}, jax {importlib.metadata.version('jax')}")


def load_average() -> float:
    """The 1-minute load average (nan where the OS does not say)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


QUIET_LOAD = 1.5  # above this 1-minute load average, other work shares the cores


def print_tables(rows: list[dict], peers: list[str], args) -> None:
    """Prints the results as Markdown (pasteable into scripts/BENCHMARKS.md)."""
    peak = statistics.median(r["peak"] for r in rows)

    def baseline(r):
        return f"{r['baseline']:,.0f}/s ({100 * r['roofline']:.0f}% of roofline)"

    def table(header, lines):
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")

    print(f"\nexamples/s (medians), ratio to the hand-written step in a plain process; matmul roofline {peak / 1e9:.0f} GFLOP/s\n")
    table(
        ["workload", "hand-written, plain process", "hand-written, fntrain process", "fntrain K=1", f"fntrain K={args.fuse}",
         "fntrain loop (auto)", "fntrain K=1 bf16", "K=1 / same-process hand", "loop / K=1 around it", "fused compile"],
        [
            [r["workload"], baseline(r), f"{r['hand_same_process'] / r['baseline']:.2f}", f"{r['k1'] / r['baseline']:.2f}",
             f"{r['fused'] / r['baseline']:.2f}", f"{r['loop'] / r['baseline']:.2f}", f"{r['k1_bf16'] / r['baseline']:.2f}",
             f"{r['k1'] / r['hand_same_process']:.2f}", f"{r['loop_over_k1']:.2f}", f"{r['fused_compile_s']:.1f} s"]
            for r in rows
        ],
    )
    print(f"\nallocator in the fntrain process: {rows[0]['allocator']}; plain process: glibc malloc defaults")
    for r in rows:
        for shape, c in r["conv_kernels"].items():
            if shape.startswith(f"x{shapes(r['workload'], args.tiny)[0]}x"):  # the training batch's
                timed = ", ".join(f"{k} {v:.1f} ms" for k, v in c["ms"].items()) if c["ms"] else "not timed"
                print(f"conv kernel on {r['workload']} {shape}: {c['kernel']} ({c['source']}: {timed})")
    print("loop.steps_per_dispatch: auto chose, per round: " + "; ".join(
        f"{r['workload']} " + ", ".join(describe_dispatch(c) for c in r["loop_dispatch"]) for r in rows))

    def peer_cell(r, peer):
        p = r["peers"][peer]
        if isinstance(p, str):
            return p
        cell = f"{p['rate'] / r['baseline']:.2f}"
        if p["hand_same_process"]:
            cell += f" ({p['rate'] / p['hand_same_process']:.2f})"
        return cell

    print("\nexamples/s per framework, ratio to the hand-written JAX step in a plain process; "
          "in brackets for JAX peers: ratio to the hand-written step timed in the peer's own process\n")
    table(
        ["workload", "hand-written, plain process", "fntrain K=1", f"fntrain K={args.fuse}", *peers],
        [
            [r["workload"], baseline(r), f"{r['k1'] / r['baseline']:.2f}", f"{r['fused'] / r['baseline']:.2f}",
             *(peer_cell(r, p) for p in peers)]
            for r in rows
        ],
    )
    print()
    print_verdicts(rows, args)


def print_verdicts(rows: list[dict], args) -> None:
    """One line per workload: fntrain's best configuration against every peer measured."""
    for r in rows:
        configs = {"K=1": r["k1"], f"K={args.fuse}": r["fused"], "loop": r["loop"]}
        label = max(configs, key=configs.get)
        ours = configs[label] / r["baseline"]
        roof = f", {100 * r['roofline'] * ours:.0f}% of roofline"
        measured = {p: v["rate"] / r["baseline"] for p, v in r["peers"].items() if isinstance(v, dict)}
        missing = [f"{p} {v}" for p, v in r["peers"].items() if isinstance(v, str)]
        note = f" (not measured: {', '.join(missing)})" if missing else ""
        if not measured:
            print(f"- {r['workload']}: fntrain best {label} ({ours:.2f}{roof}); no peer measured{note}")
            continue
        best = max(measured, key=measured.get)
        if all(ours > v for v in measured.values()):
            print(f"- {r['workload']}: fntrain best {label} ({ours:.2f}{roof}) beats every peer measured; "
                  f"best peer {best} ({measured[best]:.2f}){note}")
        else:
            ahead = ", ".join(f"{p} ({v:.2f})" for p, v in measured.items() if v >= ours)
            print(f"- {r['workload']}: fntrain best {label} ({ours:.2f}{roof}) does not beat every peer: {ahead}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1,W2,W3,W4")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per window (default: per workload)")
    parser.add_argument("--fuse", type=int, default=50, help="K for the fused step")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of interleaved plain/fntrain/peer processes")
    parser.add_argument("--peers", type=parse_peers, default="all",
                        help=f"comma list of {', '.join(PEERS)}; 'all' (default: those installed) or 'none'")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a smoke test")
    parser.add_argument("--worker", choices=("plain", "fntrain", *(f"peer:{p}" for p in PEERS)), help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.workloads.split(",")
    default_steps = {"W1": 200, "W2": 40, "W3": 10, "W4": 10}

    if args.worker:
        args.steps = args.steps or default_steps[names[0]]
        if args.worker.startswith("peer:"):
            result = worker_peer(args.worker.removeprefix("peer:"), names[0], args)
        else:
            result = (worker_plain if args.worker == "plain" else worker_fntrain)(names[0], args)
        print(json.dumps(result))
        return

    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    before = load_average()
    rows = []
    fixed_steps = args.steps
    for name in names:
        args.steps = fixed_steps or (2 if args.tiny else default_steps[name])
        rows.append(measure(name, args.peers, args))
    after = load_average()
    print_tables(rows, args.peers, args)
    print(f"\nload average (1 min): {before:.2f} before, {after:.2f} after (counted with this bench's own "
          f"process, about 1-2 while it runs on 2 cores)")
    if before > QUIET_LOAD or after > QUIET_LOAD + 2:
        print(f"warning: the load average was {before:.2f} before and {after:.2f} after the run (quiet: at most "
              f"{QUIET_LOAD} before, {QUIET_LOAD + 2} after): other work was "
              "sharing the cores, so these ratios are noisier than usual; rerun on a quiet machine", file=sys.stderr)


if __name__ == "__main__":
    main()
