"""The train step: known answers, compile-once, structure, fusion and convergence."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fntrain as ft


def regression_problem(n=64, f=5, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, f))
    w_true = jax.random.normal(kw, (f, 1))
    return x, x @ w_true + 0.5


def test_one_sgd_step_equals_hand_written_gradient_descent():
    """For a linear model with MSE the gradient has a closed form; one SGD step must match it."""
    x, y = regression_problem()
    net = ft.nn.dense(1)
    params, state = net.init(jax.random.key(0), x)
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    lr = 0.1
    opt = optax.sgd(lr)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(1))
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.mean_squared_error), opt, grad_norm_every_steps=1)
    ts, metrics = step(ts, (x, y))

    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    residual = xn @ w + b - yn  # [N, 1]
    grad_w = 2 * xn.T @ residual / len(xn)
    grad_b = 2 * residual.mean(axis=0)
    # float32 forward pass and reduction over 64 examples: ~1e-6 relative.
    np.testing.assert_allclose(ts.params["w"], w - lr * grad_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ts.params["b"], b - lr * grad_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], (residual**2).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], np.sqrt((grad_w**2).sum() + (grad_b**2).sum()), rtol=1e-5)
    assert int(ts.step) == 1


def test_public_contract_example_runs_and_preserves_structure():
    x = jax.random.normal(jax.random.key(0), (16, 20))
    y = jnp.arange(16) % 10
    net = ft.nn.serial(ft.nn.dense(128), ft.nn.relu, ft.nn.dense(10))
    params, state = net.init(jax.random.key(0), x[:1])
    logits, state = net.apply(params, state, x, train=False, key=None)
    assert logits.shape == (16, 10)
    opt = optax.adam(1e-3)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(1))
    structure = jax.tree.structure(ts)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), ts)
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy), opt)
    ts, metrics = step(ts, (x, y))
    assert metrics["loss"].shape == () and set(metrics) == {"loss", "nonfinite", "accuracy"}
    assert jax.tree.structure(ts) == structure
    assert jax.tree.map(lambda a: (a.shape, a.dtype), ts) == shapes
    eval_metrics = ft.make_eval_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy))(ts, (x, y))
    assert set(eval_metrics) == {"loss", "accuracy"}


def test_grad_norm_is_computed_on_every_nth_update_and_nan_on_the_others():
    x, y = regression_problem()
    net = ft.nn.dense(1)
    params, state = net.init(jax.random.key(0), x)
    opt = optax.sgd(0.05)
    loss_fn = ft.supervised_loss(net, ft.losses.mean_squared_error)
    every = ft.make_train_step(loss_fn, opt, grad_norm_every_steps=1, donate=False)
    third = ft.make_train_step(loss_fn, opt, grad_norm_every_steps=3, donate=False)
    fused = ft.make_train_step(loss_fn, opt, grad_norm_every_steps=3, steps_per_dispatch=6, donate=False)
    ts_every = ts_third = ft.TrainState.create(params, state, opt, key=jax.random.key(1))
    norms_every, norms_third = [], []
    for _ in range(6):
        ts_every, m = every(ts_every, (x, y))
        norms_every.append(float(m["grad_norm"]))
        ts_third, m = third(ts_third, (x, y))
        norms_third.append(float(m["grad_norm"]))
        assert int(m["nonfinite"]) == 0
    # Updates 3 and 6 (the new step is a multiple of 3) carry the same norm as computing it always.
    np.testing.assert_array_equal(norms_third[2::3], np.asarray(norms_every)[2::3])
    assert np.isnan([norms_third[i] for i in (0, 1, 3, 4)]).all()
    _, m = fused(ft.TrainState.create(params, state, opt, key=jax.random.key(1)), jax.tree.map(lambda a: jnp.stack([a] * 6), (x, y)))
    np.testing.assert_array_equal(np.asarray(m["grad_norm"]), norms_third)
    with pytest.raises(ValueError, match="grad_norm_every_steps"):
        ft.make_train_step(loss_fn, opt, grad_norm_every_steps=0)


def dense_mse_step(features: int):
    """A ``dense(features)`` MSE step with SGD, its initial state, and inputs ``x: [4, 3]`` of ones."""
    net = ft.nn.dense(features)
    x = jnp.ones((4, 3))
    params, state = net.init(jax.random.key(0), x)
    opt = optax.sgd(0.1)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(0))
    return ft.make_train_step(ft.supervised_loss(net, ft.losses.mean_squared_error), opt), ts, x


def test_nonfinite_flag_catches_a_nan_loss_without_the_gradient_norm():
    step, ts, x = dense_mse_step(1)
    ts, m = step(ts, (x, jnp.zeros((4, 1))))
    assert int(m["nonfinite"]) == 0
    _, m = step(ts, (x.at[0, 0].set(jnp.nan), jnp.zeros((4, 1))))
    assert int(m["nonfinite"]) == 1 and "grad_norm" not in m


def test_step_compiles_once_for_same_shaped_batches():
    traces = []
    net = ft.nn.mlp((8,), 3)

    def loss_fn(params, state, batch, key):
        traces.append(1)  # runs only while tracing
        return ft.supervised_loss(net, ft.losses.softmax_cross_entropy)(params, state, batch, key)

    x = jnp.ones((4, 6))
    params, state = net.init(jax.random.key(0), x)
    opt = optax.sgd(0.1)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(0))
    step = ft.make_train_step(loss_fn, opt)
    for i in range(10):
        ts, _ = step(ts, (x + i, jnp.full((4,), i % 3)))
    assert len(traces) == 1


def test_donation_consumes_the_old_state():
    step, ts, x = dense_mse_step(2)
    new_ts, _ = step(ts, (x, jnp.zeros((4, 2))))
    assert ts.params["w"].is_deleted() and not new_ts.params["w"].is_deleted()


def test_hand_written_loss_fn_with_state_and_metrics():
    """A research loss_fn with the documented signature, threading its own state."""

    def loss_fn(params, state, batch, key):
        x, y = batch
        noise = jax.random.normal(key, x.shape) * 0.0
        pred = (x + noise) @ params["w"]
        loss = jnp.mean((pred - y) ** 2)
        return loss, ({"calls": state["calls"] + 1}, {"pred_mean": jnp.mean(pred)})

    params, state = {"w": jnp.zeros((3, 1))}, {"calls": jnp.zeros((), jnp.int32)}
    opt = optax.sgd(0.05)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(0))
    step = ft.make_train_step(loss_fn, opt)
    x = jnp.eye(3)
    y = jnp.array([[1.0], [2.0], [3.0]])
    for _ in range(300):
        ts, metrics = step(ts, (x, y))
    assert int(ts.model_state["calls"]) == 300
    np.testing.assert_allclose(ts.params["w"][:, 0], [1.0, 2.0, 3.0], atol=1e-3)
    assert "pred_mean" in metrics


def test_batch_norm_state_updates_in_training_and_not_in_evaluation():
    net = ft.nn.mlp((8,), 2, norm="batch")
    x = jax.random.normal(jax.random.key(0), (32, 4)) + 3.0
    y = (x[:, 0] > 3.0).astype(jnp.int32)
    params, state = net.init(jax.random.key(0), x)
    opt = optax.adam(1e-2)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(0))
    ts, _ = ft.make_train_step(loss_fn, opt, donate=False)(ts, (x, y))
    h = x @ params["dense_1"]["w"] + params["dense_1"]["b"]  # the pre-norm activations at step 0
    np.testing.assert_allclose(ts.model_state["batch_norm_2"]["mean"], 0.1 * h.mean(0), rtol=1e-4, atol=1e-5)
    before = jax.tree.map(np.asarray, ts.model_state)
    ft.make_eval_step(loss_fn)(ts, (x, y))
    jax.tree.map(np.testing.assert_array_equal, before, ts.model_state)


def test_fused_steps_match_single_steps_bitwise():
    net = ft.nn.mlp((16,), 3, dropout_rate=0.2)
    xs = jax.random.normal(jax.random.key(0), (4, 8, 5))
    ys = jax.random.randint(jax.random.key(1), (4, 8), 0, 3)
    params, state = net.init(jax.random.key(2), xs[0])
    opt = optax.adam(1e-2)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy)
    single = ft.make_train_step(loss_fn, opt)
    fused = ft.make_train_step(loss_fn, opt, steps_per_dispatch=4)
    ts1 = ft.TrainState.create(params, state, opt, key=jax.random.key(3))
    ts4 = jax.tree.map(jnp.copy, ts1)
    losses = []
    for k in range(4):
        ts1, m = single(ts1, (xs[k], ys[k]))
        losses.append(m["loss"])
    ts4, m4 = fused(ts4, (xs, ys))
    assert m4["loss"].shape == (4,)
    # Measured bitwise on XLA:CPU: the scan body is the same computation as the single step.
    np.testing.assert_array_equal(m4["loss"], np.stack(losses))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.leaves(ts1.params), jax.tree.leaves(ts4.params))
    assert int(ts4.step) == 4


def test_bad_steps_per_dispatch_is_rejected():
    with pytest.raises(ValueError, match="steps_per_dispatch"):
        ft.make_train_step(lambda *a: None, optax.sgd(0.1), steps_per_dispatch=0)


def test_regression_converges():
    x, y = regression_problem(n=256, f=4)
    net = ft.nn.mlp((32,), 1, activation="tanh")
    params, state = net.init(jax.random.key(0), x)
    opt = optax.adam(1e-2)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(1))
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.mean_squared_error), opt)
    for _ in range(500):
        ts, metrics = step(ts, (x, y))
    # Targets have variance ~5; a near-linear fit reaches well under 1% of that.
    assert float(metrics["loss"]) < 0.02


def test_classification_converges():
    centers = jnp.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = jnp.arange(300) % 3
    x = centers[y] + 0.5 * jax.random.normal(jax.random.key(0), (300, 2))
    net = ft.nn.mlp((16,), 3)
    params, state = net.init(jax.random.key(0), x)
    opt = optax.adam(1e-2)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(1))
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy), opt)
    for _ in range(200):
        ts, metrics = step(ts, (x, y))
    assert float(metrics["loss"]) < 0.1 and float(metrics["accuracy"]) > 0.97


def _kernel_shaped_convolutions(step, ts, batch, kernel_shapes) -> list[str]:
    """Convolutions in the compiled step whose output is a kernel: kernel-gradient convolutions."""
    text = step.lower(ts, batch).compile().as_text()
    shapes = {f"f32[{','.join(map(str, s))}]" for s in kernel_shapes}
    return [line for line in text.splitlines() if "convolution(" in line and line.split("=")[1].split("{")[0].strip() in shapes]


def test_fused_cnn_steps_have_no_kernel_gradient_convolution_in_the_scan():
    """XLA:CPU runs a kernel-gradient convolution inside a scan body as a naive loop (50x slower);
    fntrain's conv2d is an im2col matmul whose gradients are matmuls, so no convolution at all
    may appear in a fused step."""
    net = ft.nn.serial(ft.nn.conv2d(8), ft.nn.relu, ft.nn.conv2d(16), ft.nn.relu, ft.nn.flatten, ft.nn.dense(10))
    xs, ys = jnp.ones((4, 4, 8, 8, 1)), jnp.zeros((4, 4), jnp.int32)
    params, state = net.init(jax.random.key(0), xs[0])
    kernels = [(3, 3, 1, 8), (3, 3, 8, 16)]
    opt = optax.sgd(0.1)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(0))
    fused = ft.make_train_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy), opt, steps_per_dispatch=4)
    assert _kernel_shaped_convolutions(fused, ts, (xs, ys), kernels) == []
    assert "convolution(" not in fused.lower(ts, (xs, ys)).compile().as_text()

    # Control: the same network written with lax's convolution shows what the check catches.
    def lax_loss(params, state, batch, key):
        x, y = batch
        dn = ("NHWC", "HWIO", "NHWC")
        for name in ("conv2d_0", "conv2d_2"):
            x = jax.nn.relu(jax.lax.conv_general_dilated(x, params[name]["w"], (1, 1), "SAME", dimension_numbers=dn))
        logits = x.reshape(x.shape[0], -1) @ params["dense_5"]["w"]
        return ft.losses.softmax_cross_entropy(logits, y), (state, {})

    control = ft.make_train_step(lax_loss, opt, steps_per_dispatch=4)
    assert len(_kernel_shaped_convolutions(control, ts, (xs, ys), kernels)) == 2


# --------------------------------------------------------------------------- gradient accumulation


def _train(loss_fn, opt, params, state, batches, **kwargs):
    step = ft.make_train_step(loss_fn, opt, donate=False, **kwargs)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(3))
    metrics = []
    for batch in batches:
        ts, m = step(ts, batch)
        metrics.append(m)
    return ts, metrics


def test_accumulated_steps_equal_full_batch_steps():
    """20 Adam steps on batches of 64: 4 microbatches of 16 give the parameters of one batch of 64."""
    net = ft.nn.mlp((32, 32), 5)
    xs = jax.random.normal(jax.random.key(0), (20, 64, 12))
    ys = jax.random.randint(jax.random.key(1), (20, 64), 0, 5)
    params, state = net.init(jax.random.key(2), xs[0])
    opt = optax.adam(3e-3)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy)
    batches = list(zip(xs, ys))
    full, m_full = _train(loss_fn, opt, params, state, batches)
    acc, m_acc = _train(loss_fn, opt, params, state, batches, accumulate_steps=4)
    # float32 sums over 64 rows in another order, through 20 Adam updates: 1e-5 relative.
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(acc.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    for a, b in zip(m_full, m_acc):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
        np.testing.assert_allclose(b["accuracy"], a["accuracy"], rtol=1e-6)  # exact counts, summed


def test_accumulation_with_padding_rows_gives_the_weighted_mean_over_the_whole_batch():
    """A padded batch of 32 rows in 8 microbatches, of which the last holds only weight-0 rows
    and the others 1 to 3 real rows: one SGD step equals the step on the 18 real rows alone
    (computed in float64 by hand for a linear model)."""
    x, y = regression_problem(n=32, f=3)
    real = (np.arange(32) < 20) & (np.arange(32) % 8 != 7)  # microbatch j holds rows j, j + 8, ...
    weights = jnp.asarray(real, jnp.float32)
    x = jnp.where(real[:, None], x, 100.0)  # padding rows hold junk; weight 0 must make it count for nothing
    net = ft.nn.dense(1)
    params, state = net.init(jax.random.key(0), x)
    lr = 0.1
    loss_fn = ft.supervised_loss(net, ft.losses.mean_squared_error)
    ts, (m,) = _train(loss_fn, optax.sgd(lr), params, state, [(x, y, weights)], accumulate_steps=8)
    xn, yn = np.asarray(x, np.float64)[real], np.asarray(y, np.float64)[real]
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    residual = xn @ w + b - yn
    # float32 forward pass, 18 rows: 1e-5 relative.
    np.testing.assert_allclose(ts.params["w"], w - lr * 2 * xn.T @ residual / len(xn), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ts.params["b"], b - lr * 2 * residual.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["loss"], (residual**2).mean(), rtol=1e-5)


def test_accumulation_composes_with_fused_steps():
    net = ft.nn.mlp((16,), 3)
    xs = jax.random.normal(jax.random.key(0), (4, 32, 5))
    ys = jax.random.randint(jax.random.key(1), (4, 32), 0, 3)
    params, state = net.init(jax.random.key(2), xs[0])
    opt = optax.adam(1e-2)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy)
    single, _ = _train(loss_fn, opt, params, state, list(zip(xs, ys)), accumulate_steps=4)
    fused, (m,) = _train(loss_fn, opt, params, state, [(xs, ys)], accumulate_steps=4, steps_per_dispatch=4)
    assert m["loss"].shape == (4,)
    # The fused scan body is the accumulated step: bitwise on XLA:CPU, as for plain fused steps.
    jax.tree.map(np.testing.assert_array_equal, single.params, fused.params)


def test_accumulation_runs_batch_norm_per_microbatch():
    """Batch norm normalises each microbatch with its own statistics and updates its running
    mean once per microbatch, in order: after one step from mean 0 with momentum m over
    microbatches a, b the running mean is (1 - m) * (m * mean_a + mean_b)."""
    net = ft.nn.serial(ft.nn.dense(4), ft.nn.batch_norm(momentum=0.9))
    x = jax.random.normal(jax.random.key(0), (8, 3)) + jnp.arange(8.0)[:, None]
    params, state = net.init(jax.random.key(1), x)

    def loss_fn(params, state, batch, key):
        out, state = net.apply(params, state, batch[0], train=True, key=key)
        return jnp.mean(out**2), (state, {})

    ts, _ = _train(loss_fn, optax.sgd(0.0), params, state, [(x, jnp.zeros(8))], accumulate_steps=2)
    h = np.asarray(x @ params["dense_0"]["w"] + params["dense_0"]["b"], np.float64)
    mean_a, mean_b = h[0::2].mean(0), h[1::2].mean(0)  # microbatch j holds rows j, j + 2, ...
    np.testing.assert_allclose(ts.model_state["batch_norm_1"]["mean"], 0.1 * (0.9 * mean_a + mean_b), rtol=1e-5)


def test_accumulation_that_does_not_divide_the_batch_is_an_error():
    step, ts, x = dense_mse_step(1)
    loss_fn = ft.supervised_loss(ft.nn.dense(1), ft.losses.mean_squared_error)
    bad = ft.make_train_step(loss_fn, optax.sgd(0.1), accumulate_steps=3)
    with pytest.raises(ValueError, match="accumulate_steps=3 must divide the batch's 4 rows"):
        bad(ts, (x, jnp.zeros((4, 1))))
    with pytest.raises(ValueError, match="accumulate_steps must be a positive int"):
        ft.make_train_step(loss_fn, optax.sgd(0.1), accumulate_steps=0)


def _temp_bytes(step, ts, batch) -> int:
    return step.lower(ts, batch).compile().memory_analysis().temp_size_in_bytes


def test_accumulation_keeps_only_one_microbatch_of_activations():
    """At batch 4096 through 1024-wide layers the activations dominate: with 8 microbatches the
    compiled step needs at most a third of the unaccumulated step's temporary memory."""
    net = ft.nn.mlp((1024, 1024), 10)
    x, y = jnp.ones((4096, 32)), jnp.zeros((4096,), jnp.int32)
    params, state = net.init(jax.random.key(0), x[:1])
    opt = optax.sgd(0.1)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(0))
    plain = _temp_bytes(ft.make_train_step(loss_fn, opt), ts, (x, y))
    accumulated = _temp_bytes(ft.make_train_step(loss_fn, opt, accumulate_steps=8), ts, (x, y))
    activations = 4096 * 1024 * 4  # one float32 [4096, 1024] array: 16 MiB
    assert plain > 2 * activations, plain  # the check below compares activations, not parameters
    assert accumulated <= plain / 3, (accumulated, plain)
