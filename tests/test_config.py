"""Config loading, the shipped configs, the README reference, and the builders' numbers."""

import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fntrain as ft
from fntrain import builders
from fntrain.config import OptimizerConfig, apply_overrides, load_config, parse_override, validate

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_config_is_immutable_and_hashable():
    config = load_config(ROOT / "configs/digits_mlp.yaml")
    same = load_config(ROOT / "configs/digits_mlp.yaml")
    assert hash(config) == hash(same) and config == same
    with pytest.raises(Exception):
        config.seed = 3
    # Hashable means usable as a static argument of jit.
    f = jax.jit(lambda x, c: x * c.optimizer.learning_rate, static_argnums=1)
    np.testing.assert_allclose(f(jnp.ones(()), config), config.optimizer.learning_rate)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: digits}\nmodel: {name: mlp}\nloop: {num_epochs: 1}\noptimizer: {learning_rate: 1e-3}\n")
    config = load_config(path)
    assert config.optimizer.learning_rate == 0.001 and isinstance(config.optimizer.learning_rate, float)
    assert config.output_dir == str(Path("runs") / "c")


def test_overrides_are_yaml_typed_and_create_sections():
    assert parse_override("optimizer.learning_rate=3e-4") == (("optimizer", "learning_rate"), 3e-4)
    assert parse_override("model.hidden_sizes=[256, 256]") == (("model", "hidden_sizes"), [256, 256])
    assert parse_override("data.standardize=true")[1] is True
    raw = apply_overrides({"a": {"b": 1}}, ["a.c=2", "x.y.z=none"])
    assert raw == {"a": {"b": 1, "c": 2}, "x": {"y": {"z": "none"}}}
    with pytest.raises(ft.ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_readme_config_reference_is_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "scripts/config_reference.py"), "--check"])
    assert result.returncode == 0, "run: python scripts/config_reference.py --write"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_trains_two_steps(path, tmp_path):
    config = load_config(path, [f"output_dir={tmp_path}", "loop.kind=steps", "loop.num_steps=2", "log.progress=none", "optimizer.schedule.warmup_steps=0"])
    # The resolved config round-trips through its YAML dump.
    assert validate(ft.config.parse_yaml(ft.config.dump_config(config), "dump"), "dump") == config
    result = ft.train(config, stream=open(tmp_path / "log.txt", "w"))
    assert int(result.state.step) == 2
    assert math.isfinite(result.metrics["train"]["loss"])


# --------------------------------------------------------------------------- builders


def schedule_values(overrides, total=100, steps=(0, 10, 50, 99)):
    c = OptimizerConfig.model_validate({"learning_rate": 0.1, **overrides})
    schedule = builders.build_schedule(c, total)
    return np.array([float(schedule(s)) for s in steps])


def test_schedules_match_hand_written_formulas():
    t = np.array([0, 10, 50, 99])
    np.testing.assert_allclose(schedule_values({}), 0.1)
    cosine = 0.1 * (0.5 * (1 + np.cos(np.pi * t / 100)))
    # float32 cos near pi: compare absolutely at the scale of the learning rate.
    np.testing.assert_allclose(schedule_values({"schedule": {"name": "cosine"}}), cosine, rtol=1e-5, atol=1e-8)
    linear = 0.1 + (0.01 - 0.1) * np.minimum(t / 40, 1)
    np.testing.assert_allclose(
        schedule_values({"schedule": {"name": "linear", "end_value": 0.01, "decay_steps": 40}}), linear, rtol=1e-5
    )
    piecewise = np.array([0.1, 0.1, 0.1 * 0.5, 0.1 * 0.5 * 0.2])
    np.testing.assert_allclose(
        schedule_values({"schedule": {"name": "piecewise", "boundaries": [20, 60], "scales": [0.5, 0.2]}}),
        piecewise,
        rtol=1e-5,
    )
    exponential = 0.1 * 0.5 ** (t / 25)
    np.testing.assert_allclose(
        schedule_values({"schedule": {"name": "exponential", "transition_steps": 25, "decay_rate": 0.5}}),
        exponential,
        rtol=1e-5,
    )
    warm = schedule_values({"schedule": {"name": "warmup_cosine", "warmup_steps": 20}}, steps=(0, 10, 20, 60, 100))
    expected = [0.0, 0.05, 0.1, 0.1 * 0.5 * (1 + np.cos(np.pi * 40 / 80)), 0.0]
    np.testing.assert_allclose(warm, expected, rtol=1e-5, atol=1e-7)


def test_warmup_longer_than_training_is_a_config_error():
    c = OptimizerConfig.model_validate({"schedule": {"name": "warmup_cosine", "warmup_steps": 500}})
    with pytest.raises(ft.ConfigError, match="warmup_steps"):
        builders.build_schedule(c, 100)


def one_update(overrides, grads, params):
    tx, _ = builders.build_optimizer(OptimizerConfig.model_validate(overrides), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)


def test_sgd_weight_decay_spares_biases_and_clipping_bounds_the_norm():
    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
    grads = {"w": jnp.full((2, 2), 3.0), "b": jnp.full((2,), 4.0)}
    new = one_update({"name": "sgd", "learning_rate": 0.1, "weight_decay": 0.5}, grads, params)
    np.testing.assert_allclose(new["w"], 2.0 - 0.1 * (3.0 + 0.5 * 2.0), rtol=1e-6)
    np.testing.assert_allclose(new["b"], 2.0 - 0.1 * 4.0, rtol=1e-6)  # no decay on a bias
    clipped = one_update({"name": "sgd", "learning_rate": 1.0, "clip_grad_norm": 1.0}, grads, params)
    norm = math.sqrt(4 * 9 + 2 * 16)
    np.testing.assert_allclose(clipped["w"], 2.0 - 3.0 / norm, rtol=1e-6)


def test_each_optimizer_matches_optax_directly():
    params = {"w": jnp.arange(4.0).reshape(2, 2)}
    grads = {"w": jnp.array([[0.5, -1.0], [2.0, 0.1]])}
    expected = {
        "sgd": optax.sgd(0.1),
        "momentum": optax.sgd(0.1, momentum=0.9),
        "nesterov": optax.sgd(0.1, momentum=0.9, nesterov=True),
        "adam": optax.adam(0.1),
        "adamw": optax.adamw(0.1, weight_decay=0.01),
        "rmsprop": optax.rmsprop(0.1),
    }
    for name, tx in expected.items():
        overrides = {"name": name, "learning_rate": 0.1, **({"weight_decay": 0.01} if name == "adamw" else {})}
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(
            one_update(overrides, grads, params)["w"], optax.apply_updates(params, updates)["w"], rtol=1e-6, err_msg=name
        )
