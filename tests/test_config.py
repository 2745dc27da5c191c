"""Config loading, the shipped configs, docs/CONFIG.md, the variant sections, and the builders' numbers."""

import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from pydantic import TypeAdapter

import fntrain as ft
from fntrain import builders
from fntrain import config as cfg
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
    """docs/CONFIG.md (which the README links to) is what the schema generates."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts/config_reference.py"), "--check"])
    assert result.returncode == 0, "run: python scripts/config_reference.py --write"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_trains_two_steps(path, tmp_path):
    overrides = [f"output_dir={tmp_path}", "loop.kind=steps", "loop.num_steps=2", "log.progress=none"]
    schedule = ((yaml.safe_load(path.read_text()).get("optimizer") or {}).get("schedule") or {}).get("name")
    if schedule in ("warmup_cosine", "warmup_constant", "warmup_stable_decay"):  # a warm-up must end within the two steps
        overrides.append("optimizer.schedule.warmup_steps=0")
    config = load_config(path, overrides)
    # The resolved config round-trips through its YAML dump.
    assert validate(ft.config.parse_yaml(ft.config.dump_config(config), "dump"), "dump") == config
    result = ft.train(config, stream=open(tmp_path / "log.txt", "w"))
    assert int(result.state.step) == 2
    assert math.isfinite(result.metrics["train"]["loss"])


# --------------------------------------------------------------------------- builders


def optimizer_section(raw: dict):
    """An optimizer section on its own: the variant ``raw["name"]`` picks (adam without one)."""
    return TypeAdapter(OptimizerConfig).validate_python(raw)


def schedule_values(overrides, total=100, steps=(0, 10, 50, 99)):
    c = optimizer_section({"learning_rate": 0.1, **overrides})
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
    c = optimizer_section({"schedule": {"name": "warmup_cosine", "warmup_steps": 500}})
    with pytest.raises(ft.ConfigError, match="warmup_steps"):
        builders.build_schedule(c, 100)
    c = optimizer_section({"schedule": {"name": "warmup_stable_decay", "warmup_steps": 60, "decay_steps": 50}})
    with pytest.raises(ft.ConfigError, match=r"warmup_steps \(60\) and the decay \(50 steps\) do not fit in the run's 100"):
        builders.build_schedule(c, 100)


def one_update(overrides, grads, params):
    tx, _ = builders.build_optimizer(optimizer_section(overrides), 10)
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


# --------------------------------------------------------------------------- variant sections


def raw_with(**sections) -> dict:
    """A minimal valid config dict, with ``sections`` set on top."""
    raw = {"output_dir": "o", "data": {"name": "digits"}, "model": {"name": "mlp"}, "loop": {"kind": "steps", "num_steps": 5}}
    return {**raw, **sections}


@pytest.mark.parametrize(
    "sections, key, variant, owner",
    [
        ({"loss": {"name": "mse", "label_smoothing": 0.1}}, "loss.label_smoothing", "loss 'mse'", "softmax_cross_entropy"),
        ({"optimizer": {"name": "sgd", "b1": 0.8}}, "optimizer.b1", "optimizer 'sgd'", "adam and adamw"),
        ({"optimizer": {"schedule": {"name": "constant", "warmup_steps": 5}}}, "optimizer.schedule.warmup_steps",
         "schedule 'constant'", "warmup_cosine"),
        ({"loss": {"name": "huber", "kwargs": {"delta": 2.0}}}, "loss.kwargs", "loss 'huber'", "module.path:function"),
        ({"data": {"name": "digits", "seq_len": 8}}, "data.seq_len", "data 'digits'", "charlm"),
    ],
    ids=["loss", "optimizer", "schedule", "kwargs-to-a-builtin-loss", "data"],
)
def test_a_key_of_another_variant_is_an_error_naming_it(sections, key, variant, owner):
    with pytest.raises(ft.ConfigError) as e:
        validate(raw_with(**sections), "v.yaml")
    message = str(e.value)
    assert message.startswith(f"v.yaml: {key}: {variant} takes no '{key.split('.')[-1]}' (")
    assert owner in message and "replace the whole section" in message and "\n" not in message


def test_switching_a_variant_by_override_says_to_replace_the_whole_section():
    path = ROOT / "configs/digits_mlp.yaml"  # schedule: {name: warmup_cosine, warmup_steps: 50}
    with pytest.raises(ft.ConfigError, match=r"optimizer\.schedule\.warmup_steps: schedule 'constant' takes no "
                       r"'warmup_steps' \(warmup_cosine, warmup_constant and warmup_stable_decay have it\).* "
                       r"e\.g\. optimizer\.schedule=\{name: constant\}$"):
        load_config(path, ["optimizer.schedule.name=constant"])
    # What the message suggests works.
    config = load_config(path, ["optimizer.schedule={name: constant}"])
    assert type(config.optimizer.schedule) is cfg.ConstantSchedule
    # The suggestion keeps the keys that the new variant takes.
    raw = raw_with(optimizer={"schedule": {"name": "cosine", "warmup_steps": 5, "decay_steps": 40}})
    with pytest.raises(ft.ConfigError, match=r"e\.g\. optimizer\.schedule=\{name: cosine, decay_steps: 40\}$"):
        validate(raw, "v.yaml")


def test_a_misspelt_key_is_suggested_from_every_variant():
    with pytest.raises(ft.ConfigError, match=r"optimizer\.schedule\.warmup: unknown key; did you mean 'warmup_steps' "
                       r"\(a key of schedule warmup_stable_decay\)\?"):
        validate(raw_with(optimizer={"schedule": {"warmup": 5}}), "v.yaml")


def test_variant_sections_keep_their_attribute_names():
    config = load_config(ROOT / "configs/digits_mlp.yaml")
    assert (config.loss.name, config.optimizer.name, config.optimizer.schedule.name) == ("softmax_cross_entropy", "adamw", "warmup_cosine")
    assert (config.optimizer.learning_rate, config.optimizer.weight_decay, config.optimizer.b1) == (2e-3, 1e-2, 0.9)
    assert config.loss.label_smoothing == 0.0 and config.data.batch_size == 64
    # Sections left out get the default variant.
    config = validate(raw_with(), "d.yaml")
    assert type(config.loss) is cfg.SoftmaxCrossEntropyLoss and type(config.optimizer) is cfg.AdamOptimizer
    assert type(config.optimizer.schedule) is cfg.ConstantSchedule


def test_each_loss_variant_builds_its_function_and_states_its_facts():
    losses = ft.losses
    built = {name: validate(raw_with(loss={"name": name}), "l.yaml").loss for name in cfg.LOSS_VARIANTS}
    assert built["mse"].build() is built["mean_squared_error"].build() is losses.mean_squared_error
    assert built["sigmoid_binary_cross_entropy"].build() is losses.sigmoid_binary_cross_entropy
    smoothed = validate(raw_with(loss={"name": "softmax_cross_entropy", "label_smoothing": 0.2}), "l.yaml").loss.build()
    assert smoothed.func is losses.softmax_cross_entropy and smoothed.keywords == {"label_smoothing": 0.2}
    assert validate(raw_with(loss={"name": "huber", "delta": 0.5}), "l.yaml").loss.build().keywords == {"delta": 0.5}
    custom = validate(raw_with(loss={"name": "fntrain.losses:huber", "kwargs": {"delta": 3.0}}), "l.yaml").loss.build()
    assert custom.func is losses.huber and custom.keywords == {"delta": 3.0}
    # What the loop reads instead of comparing names (accuracy keeps its metrics.jsonl name for BCE).
    assert built["softmax_cross_entropy"].default_metrics == {"accuracy": "accuracy"}
    assert built["sigmoid_binary_cross_entropy"].default_metrics == {"accuracy": "binary_accuracy"}
    assert built["mse"].default_metrics == built["huber"].default_metrics == {}
    labels = ft.data.Arrays(np.zeros((4, 3), np.float32), np.array([0, 1, 2, 1]))
    splits = ft.data.Splits(labels, None, None)
    assert builders.infer_num_outputs(splits, built["softmax_cross_entropy"]) == 3
    assert builders.infer_num_outputs(splits, built["sigmoid_binary_cross_entropy"]) == 1
    # A loss name still works there, for callers written before the variants.
    assert builders.infer_num_outputs(splits, "sigmoid_binary_cross_entropy") == 1
    assert builders.infer_num_outputs(splits, "some.module:loss") == 3


# --------------------------------------------------------------------------- objective, metrics, callbacks

OBJECTIVE = {"name": "fntrain.step:supervised_loss"}  # fn(net, **kwargs) -> loss_fn, as an objective is


def test_objective_excludes_a_loss_section_and_metrics():
    config = validate(raw_with(objective=OBJECTIVE), "o.yaml")
    assert config.objective.name == OBJECTIVE["name"] and config.metrics_to_report == {}
    assert "loss" not in cfg.config_to_dict(config)  # so that the dump validates back
    assert validate(cfg.parse_yaml(cfg.dump_config(config), "dump"), "dump") == config
    with pytest.raises(ft.ConfigError, match=r"^o\.yaml: objective: .*set either objective or a loss section"):
        validate(raw_with(objective=OBJECTIVE, loss={"name": "mse"}), "o.yaml")
    with pytest.raises(ft.ConfigError, match=r"^o\.yaml: metrics: an objective returns its own metrics"):
        validate(raw_with(objective=OBJECTIVE, metrics=["accuracy"]), "o.yaml")
    # loss=null takes a file's loss section away.
    config = load_config(ROOT / "configs/digits_mlp.yaml", ["objective={name: 'fntrain.step:supervised_loss'}", "loss=null"])
    assert config.objective is not None


def test_metrics_default_to_the_losss_and_take_every_builtin_name():
    from fntrain.metrics import METRICS

    assert validate(raw_with(), "m.yaml").metrics_to_report == {"accuracy": "accuracy"}
    bce = validate(raw_with(loss={"name": "sigmoid_binary_cross_entropy"}), "m.yaml")
    assert bce.metrics is None and bce.metrics_to_report == {"accuracy": "binary_accuracy"}
    assert validate(raw_with(loss={"name": "mse"}), "m.yaml").metrics_to_report == {}
    names = [*METRICS, "fntrain.metrics:accuracy"]
    config = validate(raw_with(metrics=names), "m.yaml")
    assert config.metrics == tuple(names) and config.metrics_to_report == {n: n for n in names}
    assert validate(raw_with(metrics=[]), "m.yaml").metrics_to_report == {}


def test_an_unknown_metric_is_named_with_a_suggestion():
    with pytest.raises(ft.ConfigError, match=r"^m\.yaml: metrics\[1\]: unknown metric 'top_5_acuracy'; "
                       r"did you mean 'top_5_accuracy'\?"):
        validate(raw_with(metrics=["accuracy", "top_5_acuracy"]), "m.yaml")
    with pytest.raises(ft.ConfigError, match=r"^m\.yaml: metrics: 'accuracy' listed twice"):
        validate(raw_with(metrics=["accuracy", "accuracy"]), "m.yaml")


def test_callbacks_are_named_components():
    callbacks = [{"name": "fntrain.metrics:accuracy", "kwargs": {"every": [1, 2]}}, {"name": "fntrain.metrics:top_k_accuracy"}]
    config = validate(raw_with(callbacks=callbacks), "c.yaml")
    assert [c.name for c in config.callbacks] == [c["name"] for c in callbacks]
    assert config.callbacks[0].kwargs_dict == {"every": [1, 2]} and validate(raw_with(), "c.yaml").callbacks == ()
    assert cfg.config_to_dict(config)["callbacks"] == [callbacks[0], {**callbacks[1], "kwargs": {}}]
    with pytest.raises(ft.ConfigError, match=r"^c\.yaml: callbacks\[1\]\.name: unknown callback 'nope'"):
        validate(raw_with(callbacks=[callbacks[0], {"name": "nope"}]), "c.yaml")


# --------------------------------------------------------------------------- frozen mappings


def test_kwargs_are_an_immutable_hashable_mapping_equal_to_what_was_written():
    import copy
    import pickle
    from collections.abc import Mapping

    kwargs = {"hidden_sizes": [8, 4], "options": {"a": [1, {"b": 2}]}, "rate": 0.5}
    config = validate(raw_with(model={"name": "fntrain.nn:mlp", "kwargs": kwargs}), "k.yaml")
    m = config.model.kwargs
    assert isinstance(m, Mapping) and m == kwargs and dict(m) == kwargs
    assert (lambda **kw: kw)(**m) == kwargs
    assert m.thaw() == config.model.kwargs_dict == kwargs and type(m.thaw()["hidden_sizes"]) is list
    assert hash(m) == hash(cfg.FrozenMapping(kwargs)) and hash(config) == hash(copy.deepcopy(config))
    assert pickle.loads(pickle.dumps(m)) == m
    with pytest.raises(TypeError):
        m["rate"] = 1.0
