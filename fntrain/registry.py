"""Names for user components: ``module.path:function`` or names registered from Python.

Example:
  >>> @fntrain.register_model("tiny")
  ... def tiny(num_outputs):
  ...     return fntrain.nn.serial(fntrain.nn.dense(num_outputs))

  Then ``model: {name: tiny}`` in a config builds it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Callable, Optional

from fntrain.errors import ConfigError
from fntrain.imports import import_function
from fntrain.limits import quote

KINDS = ("model", "loss", "dataset", "objective", "metric", "callback")
_REGISTRY: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}

# Where each kind's built-in names live, as (module, mapping); imported when first needed,
# since the config package imports this module.
_BUILTINS = {
    "model": ("fntrain.config.model", "MODEL_VARIANTS"),
    "loss": ("fntrain.config.loss", "LOSS_VARIANTS"),
    "dataset": ("fntrain.config.data", "DATA_VARIANTS"),
    "metric": ("fntrain.metrics", "METRICS"),
}


def builtin_names(kind: str) -> tuple[str, ...]:
    """The names a config resolves to a built-in of ``kind`` (a registered one could never win)."""
    if kind not in _BUILTINS:
        return ()
    module, attr = _BUILTINS[kind]
    return tuple(getattr(importlib.import_module(module), attr))


def _register(kind: str, name: str) -> Callable[[Callable], Callable]:
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"register_{kind}: expected a name without ':' (those name a module.path:function), got {name!r}"
        )
    if name in builtin_names(kind):
        raise ValueError(
            f"register_{kind}({name!r}): {name!r} is already the built-in {kind} of that name, which a config "
            f"would always pick; choose another name, e.g. 'my_{name}'"
        )

    def decorator(fn: Callable) -> Callable:
        _REGISTRY[kind][name] = fn
        return fn

    return decorator


def register_model(name: str):
    """Decorator: ``fn(**kwargs) -> fntrain.nn.Module`` becomes ``model.name: <name>``."""
    return _register("model", name)


def register_loss(name: str):
    """Decorator: ``fn(outputs, targets, **kwargs) -> scalar`` becomes ``loss.name: <name>``."""
    return _register("loss", name)


def register_dataset(name: str):
    """Decorator: ``fn(**kwargs) -> fntrain.data.Arrays`` becomes ``data.name: <name>``."""
    return _register("dataset", name)


def register_objective(name: str):
    """Decorator: ``fn(net, **kwargs) -> loss_fn`` becomes ``objective.name: <name>``.

    The ``loss_fn`` is ``loss_fn(params, model_state, batch, key) -> (loss, (model_state, metrics))``,
    as ``fntrain.step`` describes.
    """
    return _register("objective", name)


def register_metric(name: str):
    """Decorator: ``fn(outputs, targets) -> scalar`` becomes a name in a config's ``metrics`` list."""
    return _register("metric", name)


def register_callback(name: str):
    """Decorator: ``factory(**kwargs) -> callback`` becomes ``callbacks: [{name: <name>}]``."""
    return _register("callback", name)


def lookup(
    name: str, kind: str, builtins: dict[str, Callable] | None = None, *, module_dir: Optional[str] = None
) -> Callable:
    """The callable for ``name``: a built-in, a registered name, or ``module.path:function``.

    Args:
      name: the name a config gives.
      kind: one of ``KINDS``.
      builtins: the built-in names of the kind, checked before the registry.
      module_dir: the folder a ``module.path:function``'s module is imported from
        (``fntrain.imports``); None: installed modules only.

    Raises:
      ConfigError: unknown name (with a suggestion) or an import that fails.
    """
    if ":" in name:
        return import_function(name, module_dir)
    known = {**(builtins or {}), **_REGISTRY[kind]}
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1) if len(name) <= 100 else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = f"known: {', '.join(sorted(known))}" if known else "none is built in or registered"
    raise ConfigError(
        f"unknown {kind} {quote(name)}{hint} ({listing}; name a function as 'module.path:function' "
        f"or register one with fntrain.register_{kind})"
    )


def call_user(fn: Callable, kwargs: dict, section: str):
    """Calls a user's component, turning a mismatch with its signature into a ConfigError."""
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{section}.kwargs do not fit {getattr(fn, '__qualname__', fn)}{inspect.signature(fn)}: {e}") from None
    except ValueError:  # no signature to check (some builtins): let the call speak
        pass
    return fn(**kwargs)
