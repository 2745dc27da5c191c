"""Kernels chosen by platform: what a train step lowers to for CUDA and TPU (no GPU needed) and for
CPU, and the two code paths compared on CPU.

``conv2d`` and the attention pick their kernel with ``jax.lax.platform_dependent``: lowering for one
platform keeps only that platform's branch, so ``jax.export`` for ``"cuda"`` shows the GPU program on
a machine without a GPU.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from fntrain import nn
from fntrain.nn import _cpu
from fntrain.nn import attention as A
from fntrain.nn import conv_choice
from fntrain.nn import layers as L

# x [2, 4, 4, 3] -> conv2d 3x3 (patches [2, 4, 4, 27]) -> 16 positions as a sequence -> causal block.
X_SHAPE, T = (2, 4, 4, 3), 16
PATCHES = "tensor<2x4x4x27xf32>"


def small_network():
    to_sequence = nn.stateless(lambda x: x.reshape(x.shape[0], -1, x.shape[-1]), "to_sequence")
    return nn.serial(
        nn.conv2d(8, 3), nn.relu, to_sequence, nn.transformer_block(2, 16, causal=True), nn.flatten, nn.dense(5)
    )


def train_step_and_args(seed=0):
    net = small_network()
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(X_SHAPE), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, X_SHAPE[0]), jnp.int32)
    params, state = net.init(jax.random.key(seed), x)

    def loss(params, x, y):
        logits, _ = net.apply(params, state, x)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])

    def step(params, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        return value, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

    return step, loss, (params, x, y)


def lowered(fn, args, platform: str) -> str:
    return export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()


def ops(text: str, op: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(rf"stablehlo\.{op}\b", line)]


def softmax_squares(text: str) -> set[tuple[int, int]]:
    """The ``(Tq, Tk)`` of every exponential of rank 4 or more in the program: the attention softmaxes here."""
    shapes = [re.search(r": tensor<([\dx]+)xf32>", line).group(1).split("x") for line in ops(text, "exponential")]
    return {(int(s[-2]), int(s[-1])) for s in shapes if len(s) >= 4}


@pytest.fixture(scope="module")
def step_texts():
    step, _, args = train_step_and_args()
    return {p: lowered(step, args, p) for p in ("cpu", "cuda", "tpu")}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_train_step_off_cpu_uses_xla_convolution_and_jax_nn_attention(step_texts, platform):
    text = step_texts[platform]
    # The forward convolution and the kernel gradient (x is not differentiated): XLA's, twice.
    assert len(ops(text, "convolution")) == 2
    assert not [line for line in ops(text, "concatenate") if PATCHES in line], "im2col patches off CPU"
    # jax.nn's composite attends over the whole [T, T] square; the CPU kernel splits it in two.
    assert softmax_squares(text) == {(T, T)}
    # Transposed copies behind optimisation barriers are for XLA:CPU only (nn.matmul, the attention).
    assert not ops(text, "optimization_barrier")


def test_train_step_on_cpu_keeps_the_cpu_kernels(step_texts):
    text = step_texts["cpu"]
    assert not ops(text, "convolution"), "XLA:CPU's convolution (and its naive kernel gradient) is back"
    assert [line for line in ops(text, "concatenate") if PATCHES in line], "no im2col patches"
    # The causal block trick: the first half of the queries over the first half of the keys.
    assert softmax_squares(text) == {(T // 2, T // 2), (T // 2, T)}
    assert ops(text, "optimization_barrier")


def op_histogram(text: str) -> dict[str, int]:
    """How often each StableHLO op occurs, leaving out what ``platform_dependent`` adds.

    Its ``case`` on a constant index, and in a gradient the zero-filled residual slots the
    other platforms' branches would use (``broadcast_in_dim`` of a constant, dead once XLA
    inlines the one-branch case).
    """
    names = re.findall(r"stablehlo\.([a-z_]+)", text)
    return {n: names.count(n) for n in set(names) if n not in ("case", "return", "constant", "broadcast_in_dim")}


@pytest.mark.parametrize("masked", [False, True])
def test_attention_off_cpu_is_jax_nn_dot_product_attention(masked):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 6, 2, 4)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(rng.random((2, 1, 1, 6)) < 0.7) if masked else None

    def ours(q, k, v):
        return nn.dot_product_attention(q, k, v, mask=mask, causal=True)

    def theirs(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="xla")

    def grad(fn):
        return jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))), argnums=(0, 1, 2))

    for program in (lambda f: f, grad):
        assert op_histogram(lowered(program(ours), (q, k, v), "cuda")) == op_histogram(
            lowered(program(theirs), (q, k, v), "cuda")
        )


def cudnn_traces_here() -> bool:
    """Whether jax can stage out cuDNN's attention now: it checks for cuDNN (and the GPU) at trace time."""
    q = jax.ShapeDtypeStruct((1, 8, 1, 8), jnp.bfloat16)
    try:
        jax.eval_shape(lambda q: jax.nn.dot_product_attention(q, q, q, implementation="cudnn"), q)
        return True
    except (NotImplementedError, RuntimeError, ValueError, TypeError):
        return False


def test_bfloat16_attention_for_cuda_is_cudnn_where_jax_finds_it_and_xla_otherwise():
    q = jnp.zeros((2, 8, 2, 8), jnp.bfloat16)
    text = lowered(lambda q, k, v: nn.dot_product_attention(q, k, v, causal=True), (q, q, q), "cuda")
    if cudnn_traces_here():  # a GPU machine with jax's CUDA plugin
        assert "__cudnn$fmha" in text
    else:  # here: no cuDNN at trace time, so XLA's composite
        assert "custom_call" not in text and softmax_squares(text) == {(8, 8)}


def test_cuda_branch_asks_for_cudnn_only_for_half_precision_and_falls_back_to_xla(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention

    def recording(*args, implementation=None, **kwargs):
        calls.append((args[0].dtype, implementation))
        if implementation == "cudnn":
            raise NotImplementedError("as cuDNN does for shapes it does not take")
        return real(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    for dtype in (jnp.float32, jnp.bfloat16):
        q = jnp.zeros((1, 4, 1, 8), dtype)
        lowered(lambda q: nn.dot_product_attention(q, q, q), (q,), "cuda")
    # Every branch is traced (the CUDA one and the default), so each dtype shows up more than once.
    assert {impl for dtype, impl in calls if dtype == jnp.float32} == {"xla"}
    bf16 = [impl for dtype, impl in calls if dtype == jnp.bfloat16]
    assert bf16.count("cudnn") == 1 and bf16[bf16.index("cudnn") + 1] == "xla"


ATTENTION_CASES = {
    # name: (Tq, Tk, Dv, mask shape or None, causal)
    "causal blocks": (7, 7, 4, None, True),
    "causal and padding": (6, 6, 4, (2, 1, 1, 6), True),
    "padding": (6, 6, 4, (2, 1, 1, 6), False),
    "broadcast mask, Dv != Dh": (3, 5, 3, (2, 1, 3, 5), False),
    "causal, Tq < Tk": (3, 5, 4, None, True),
    "unmasked": (4, 4, 4, None, False),
}


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_cpu_and_jax_nn_attention_agree_on_cpu(case):
    tq, tk, dv, mask_shape, causal = ATTENTION_CASES[case]
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.standard_normal((2, t, 2, 4)), jnp.float32) for t in (tq, tk))
    v = jnp.asarray(rng.standard_normal((2, tk, 2, dv)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, tq, 2, dv)), jnp.float32)
    mask = None
    if mask_shape is not None:
        mask = rng.random(mask_shape) < 0.6
        mask[0, ..., -1] = True  # some query sees a key at the end
        mask[1] = False  # and every key of the second example is masked: rows average all values
        mask = jnp.asarray(mask)

    def run(attend):
        return jax.jit(lambda q, k, v: (lambda y, vjp: (y, vjp(g)))(*jax.vjp(attend, q, k, v)))(q, k, v)

    y, grads = run(lambda q, k, v: _cpu.attention(q, k, v, mask, causal=causal))
    y_ref, grads_ref = run(lambda q, k, v: A._jax_nn_attention(q, k, v, mask, causal=causal, cudnn=False))
    # Both float32 throughout with O(1) operands: softmaxes over <= 7 keys and sums of <= 7
    # terms in other orders, the scale applied before or after the matmul (~4e-7 seen).
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for ours, ref in zip(grads, grads_ref):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=2e-6)


def test_cpu_and_xla_convolution_agree_on_cpu_under_jvp_and_hessian(monkeypatch):
    monkeypatch.setenv("FNTRAIN_CONV", "im2col")  # the CPU branch is im2col, whatever timing would choose
    # test_conv.py compares the two forward and backward over a grid; here the modes that go
    # through both branches of platform_dependent under jit.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 5, 5, 2)), jnp.float32)
    w, tw = (jnp.asarray(rng.standard_normal((3, 3, 2, 2)), jnp.float32) for _ in range(2))

    def f(conv):
        return lambda w: jnp.sum(jnp.tanh(conv(x, w, (1, 1), "SAME")))

    ours, ref = f(L.conv2d_nhwc), f(conv_choice.xla_conv2d)
    modes = {"jvp": lambda f: jax.jvp(f, (w,), (tw,)), "hessian": lambda f: jax.hessian(f)(w)}
    for name, mode in modes.items():
        got, want = jax.jit(lambda: mode(ours))(), jax.jit(lambda: mode(ref))()
        # Sums of <= 18 float32 products, through tanh and its first two derivatives: ~1e-5.
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    assert ops(lowered(jax.hessian(ours), (w,), "cuda"), "convolution")


def force_default_kernels(monkeypatch):
    """Makes every platform_dependent take its default (non-CPU) branch, even on CPU."""
    monkeypatch.setattr(jax.lax, "platform_dependent", lambda *args, default, **per_platform: default(*args))


def test_train_step_on_both_code_paths_agrees_on_cpu(monkeypatch):
    step, _, args = train_step_and_args()
    loss, new_params = jax.jit(step)(*args)
    force_default_kernels(monkeypatch)
    step, _, args = train_step_and_args()  # new closures, so jit traces again
    assert "convolution" in jax.jit(step).lower(*args).as_text()
    loss_ref, new_params_ref = jax.jit(step)(*args)
    # A composed float32 network (conv, layer norms, attention, dense) with O(1) gradients,
    # each a sum of <= 128 terms rounded in another order (~1e-6); one SGD step of 0.1 scales
    # that to ~1e-7 on the parameters.
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    for path, ours in jax.tree_util.tree_leaves_with_path(new_params):
        ref = functools.reduce(lambda tree, k: tree[k.key], path, new_params_ref)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_vmap_of_a_train_step_matches_each_member_and_lowers_for_cuda():
    step, _, (params, x, y) = train_step_and_args()
    population = jax.tree.map(lambda p: jnp.stack([p, 0.5 * p, -p]), params)
    losses, stepped = jax.jit(jax.vmap(step, in_axes=(0, None, None)))(population, x, y)
    for i in range(3):
        loss_i, params_i = jax.jit(step)(jax.tree.map(lambda p: p[i], population), x, y)
        # The same float32 computation, batched: XLA may order a batched matmul's sums differently.
        np.testing.assert_allclose(losses[i], loss_i, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(stepped), jax.tree.leaves(params_i)):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
    text = lowered(jax.vmap(step, in_axes=(0, None, None)), (population, x, y), "cuda")
    assert ops(text, "convolution") and not [line for line in ops(text, "concatenate") if "x27xf32>" in line]
