"""Compile and donation guards: they name what changed, and stay quiet when nothing is wrong."""

import io
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fntrain as ft
from fntrain.guards import CompileGuard, DonationWarning, RecompileWarning, check_donation, signature

ROOT = Path(__file__).resolve().parent.parent


def small_step(**kwargs):
    net = ft.nn.dense(2)
    x = jnp.ones((4, 3))
    params, state = net.init(jax.random.key(0), x)
    opt = optax.sgd(0.1)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(0))
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.mean_squared_error), opt, **kwargs)
    return step, ts, (x, jnp.zeros((4, 2)))


def test_recompile_warning_names_the_leaf_and_both_shapes():
    step, ts, (x, y) = small_step()
    guarded = CompileGuard(step, "train_step")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):  # same shapes: one compilation, no warning
            ts, _ = guarded(ts, (x, y))
    with pytest.warns(RecompileWarning, match=r"train_step compiled again \(compilation 2\): \[1\]\[0\]: float32\[4,3\] -> float32\[2,3\]"):
        ts, _ = guarded(ts, (x[:2], y[:2]))
    assert guarded.compiles == 2


def test_allowed_changes_do_not_warn_but_others_do():
    step, ts, (x, y) = small_step()
    batch_size_only = lambda old, new: all(o[1][1:] == n[1][1:] and o[0] == n[0] for o, n in zip(old.values(), new.values()))
    guarded = CompileGuard(step, "train_step", allowed=batch_size_only)
    ts, _ = guarded(ts, (x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ts, _ = guarded(ts, (x[:2], y[:2]))
    # Compared with the latest compilation's inputs, only the targets' dtype changed.
    with pytest.warns(RecompileWarning, match=r"compilation 3\): \[1\]\[1\]: float32\[2,2\] -> int32\[2,2\]\. "):
        guarded(ts, (x[:2], y[:2].astype(jnp.int32)))


def test_signature_lists_dtype_and_shape_per_leaf():
    assert signature((jnp.ones((2, 3)), {"k": jnp.zeros(4, jnp.int32)})) == {
        "[0]": ("float32", (2, 3)), "[1]['k']": ("int32", (4,))}


def test_donation_check_names_the_buffers_that_were_kept():
    step, ts, batch = small_step(donate=False)
    step(ts, batch)
    with pytest.warns(DonationWarning, match=r"did not donate 4 input buffer\(s\) \(\.step, \.params\['b'\]"):
        assert not check_donation(ts, "train_step")
    step, ts, batch = small_step()
    step(ts, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_donation(ts, "train_step")


@pytest.mark.parametrize("extra", [[], ["loop.steps_per_dispatch=4", "log.grad_norm=true", "data.on_device=false"]],
                         ids=["K=1", "K=4-grad-norm-host-data"])
def test_training_loop_donates_and_warns_of_no_unexpected_recompile(tmp_path, extra):
    # 1257 training examples in batches of 64 leave a partial batch of 41 each epoch, and K=4
    # dispatches end early at log steps: both compile again, as the loop expects.
    config = ft.load_config(
        str(ROOT / "configs/digits_mlp.yaml"),
        ["log.progress=none", "loop.num_epochs=2", "log.every_steps=10", "optimizer.schedule.warmup_steps=5", f"output_dir={tmp_path}/run", *extra],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft.train(config, stream=io.StringIO())
    assert not [w for w in caught if issubclass(w.category, (RecompileWarning, DonationWarning))]
