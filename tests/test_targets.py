"""fntrain/targets.py: standardized regression targets and the outputs class labels need.

With ``data.standardize_targets`` the network predicts ``mean + std * f(x)``: the constants
are the training targets' (kept in the model state), losses and metrics are in the original
units, a loaded model predicts original units, and the loss (hence its gradient) is
``std^2`` times the standardized problem's for mean squared error.
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import fntrain as ft
from fntrain import targets
from fntrain.experiment import build_experiment
from fntrain.rundir import RunDir

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _config(tmp_path, **data) -> ft.Config:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (5000.0 + 300.0 * (x @ np.array([1.0, -0.5, 0.25])) + rng.normal(size=400)).astype(np.float32)
    np.savez(tmp_path / "houses.npz", x=x, y=y)
    raw = {
        "seed": 0, "output_dir": str(tmp_path / "run"),
        "data": {"name": "npz", "path": str(tmp_path / "houses.npz"), "batch_size": 32, **data},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "loss": {"name": "mse"}, "metrics": ["r2", "mean_absolute_error"],
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "loop": {"kind": "steps", "num_steps": 300},
        "log": {"every_steps": 100, "progress": "none"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    return ft.load_config(tmp_path / "c.yaml")


def test_standardized_targets_train_in_original_units(tmp_path):
    config = _config(tmp_path, standardize_targets=True)
    result = ft.train(config, stream=io.StringIO())
    exp = build_experiment(config)
    train_y = np.asarray(exp.splits.train.y, np.float64)
    scale = result.state.model_state[targets.TARGET_SCALE]
    # The constants are the training split's mean and std (float64 moments stored as float32).
    np.testing.assert_allclose(scale["mean"], train_y.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(scale["std"], train_y.std(axis=0), rtol=1e-6)
    # 300 Adam steps fit the near-linear target: metrics are in the original units (std ~340).
    test = result.metrics["test"]
    assert test["r2"] > 0.95 and test["mean_absolute_error"] < 0.2 * float(scale["std"][0])
    # A loaded model predicts original units: the saved state holds the constants.
    params, state = RunDir(config.output_dir).load_params(exp.params, exp.model_state)
    x_test, y_test = np.asarray(exp.splits.test.x), np.asarray(exp.splits.test.y)
    predictions, _ = exp.net.apply(params, state, x_test, train=False, key=None)
    mse = float(np.mean((np.asarray(predictions, np.float64) - y_test) ** 2))
    # Exact evaluation in float64 sums of float32 values: 1e-5 relative.
    assert test["loss"] == pytest.approx(mse, rel=1e-5)
    assert abs(float(np.mean(predictions)) - 5000.0) < 100.0


def test_the_loss_is_std_squared_times_the_standardized_loss(tmp_path):
    """mean((m + s f - y)^2) = s^2 mean((f - (y - m) / s)^2): the gradient scales by s^2 too."""
    exp = build_experiment(_config(tmp_path, standardize_targets=True))
    x, y = np.asarray(exp.splits.train.x[:64]), np.asarray(exp.splits.train.y[:64])
    scale = exp.model_state[targets.TARGET_SCALE]
    inner = {k: v for k, v in exp.model_state.items() if k != targets.TARGET_SCALE}

    def standardized_loss(params):
        f, _ = ft.nn.mlp((16,), 1).apply(params, inner, x, train=False, key=None)
        return jnp.mean((f - (y - scale["mean"]) / scale["std"]) ** 2)

    def loss(params):
        return exp.loss_fn(params, exp.model_state, (x, y), None)[0]

    s2 = float(scale["std"][0]) ** 2
    # float32 sums over 64 examples, then scaled by s^2 ~ 1e5: 1e-4 relative.
    assert float(loss(exp.params)) == pytest.approx(s2 * float(standardized_loss(exp.params)), rel=1e-4)
    g, g_std = jax.grad(loss)(exp.params), jax.grad(standardized_loss)(exp.params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_std)):
        np.testing.assert_allclose(np.asarray(a), s2 * np.asarray(b), rtol=1e-3, atol=1e-3 * s2 * np.abs(b).max())


def test_the_transform_is_a_layer_of_the_summary_and_keeps_the_parameters(tmp_path):
    plain = build_experiment(_config(tmp_path))
    scaled = build_experiment(_config(tmp_path, standardize_targets=True))
    # Same initial parameters (same keys); the constants only add model state.
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(scaled.params)):
        np.testing.assert_array_equal(a, b)
    assert targets.TARGET_SCALE in scaled.model_state and targets.TARGET_SCALE not in plain.model_state
    assert "target_scale" in ft.nn.summary(scaled.net, jax.ShapeDtypeStruct((1, 3), jnp.float32))


def test_standardize_targets_is_refused_for_class_labels(tmp_path):
    config = ft.load_config(str(ROOT / "configs/digits_mlp.yaml"), ["data.standardize_targets=true", f"output_dir={tmp_path}/r"])
    with pytest.raises(ft.ConfigError, match="standardize_targets: needs float regression targets"):
        build_experiment(config)
