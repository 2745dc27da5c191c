"""Registered names: new kinds, and refusing a built-in's name."""

import pytest

import fntrain as ft
from fntrain import registry


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
