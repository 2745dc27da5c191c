"""Registered names: new kinds, refusing a built-in's name, and configs that use them."""

import pytest

import fntrain as ft
from fntrain import registry
from fntrain.config import validate


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    """Each test registers into an empty registry that is thrown away afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", {kind: {} for kind in registry.KINDS})


@pytest.mark.parametrize(
    "register, name",
    [(ft.register_loss, "huber"), (ft.register_loss, "mse"), (ft.register_model, "mlp"),
     (ft.register_dataset, "digits"), (ft.register_metric, "accuracy")],
)
def test_registering_a_builtin_name_is_an_error(register, name):
    with pytest.raises(ValueError, match=rf"'{name}' is already the built-in .*; choose another name"):
        register(name)


def test_a_name_with_a_colon_cannot_be_registered():
    with pytest.raises(ValueError, match="without ':'"):
        ft.register_metric("my:metric")


@pytest.mark.parametrize("register, kind", [(ft.register_objective, "objective"), (ft.register_metric, "metric"),
                                            (ft.register_callback, "callback")])
def test_the_new_kinds_register_and_look_up(register, kind):
    @register("mine")
    def mine():
        pass

    assert registry.lookup("mine", kind) is mine
    with pytest.raises(ft.ConfigError, match=rf"unknown {kind} 'mien'; did you mean 'mine'\?.*fntrain\.register_{kind}"):
        registry.lookup("mien", kind)


def test_registered_components_are_found_by_configs():
    @ft.register_loss("my_huber")
    def my_huber(outputs, targets, delta=1.0):
        return ft.losses.huber(outputs, targets, delta=delta)

    @ft.register_objective("my_objective")
    def my_objective(net, scale=1.0):
        return ft.supervised_loss(net, ft.losses.softmax_cross_entropy)

    @ft.register_metric("my_metric")
    def my_metric(outputs, targets):
        return ft.metrics.accuracy(outputs, targets)

    @ft.register_callback("my_callback")
    def my_callback(every=1):
        return lambda *args: None

    raw = {"output_dir": "o", "data": {"name": "digits"}, "model": {"name": "mlp"}, "loop": {"kind": "steps", "num_steps": 5}}
    loss = validate({**raw, "loss": {"name": "my_huber", "kwargs": {"delta": 2.0}}}, "r.yaml").loss.build()
    assert loss.func is my_huber and loss.keywords == {"delta": 2.0}
    config = validate({**raw, "objective": {"name": "my_objective", "kwargs": {"scale": 2.0}},
                       "callbacks": [{"name": "my_callback", "kwargs": {"every": 3}}]}, "r.yaml")
    assert config.objective.function() is my_objective and config.callbacks[0].function() is my_callback
    assert validate({**raw, "metrics": ["accuracy", "my_metric"]}, "r.yaml").metrics == ("accuracy", "my_metric")
    assert registry.lookup("my_metric", "metric") is my_metric
