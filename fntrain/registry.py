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
from typing import Callable

from fntrain.errors import ConfigError

KINDS = ("model", "loss", "dataset")
_REGISTRY: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}


def _register(kind: str, name: str) -> Callable[[Callable], Callable]:
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


def _import(path: str) -> Callable:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r} for {path!r}: {e}") from None
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ConfigError(f"{path!r} is not callable")
    return fn


def lookup(name: str, kind: str, builtins: dict[str, Callable] | None = None) -> Callable:
    """The callable for ``name``: a built-in, a registered name, or ``module.path:function``.

    Raises:
      ConfigError: unknown name (with a suggestion) or an import that fails.
    """
    if ":" in name:
        return _import(name)
    known = {**(builtins or {}), **_REGISTRY[kind]}
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(known))}; "
        f"or name a function as 'module.path:function')"
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
