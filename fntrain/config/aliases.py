"""optax's named optimizers (``optax.lion``, ``optax.contrib.prodigy``, ...) by name, with their signatures.

What ``optimizer.name: optax:NAME`` may name: every public function of ``optax`` and
``optax.contrib`` whose first parameter is ``learning_rate`` (the ``scale_by_*`` blocks
aside), less the few whose update needs arguments a train step does not pass.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Callable, Optional

import optax

# Their update needs more than (updates, state, params): the train step cannot drive them.
UNSUPPORTED = {
    "lbfgs": "its update needs the loss value, gradient and function (value, grad, value_fn)",
    "contrib.momo": "its update needs the loss value (value=)",
    "contrib.momo_adam": "its update needs the loss value (value=)",
    "contrib.sophia": "its update needs the objective function (obj_fn=)",
    "contrib.dpsgd": "it clips per-example gradients, which the train step does not compute",
}
# Set through the optimizer's own keys, not kwargs.
RESERVED = {
    "learning_rate": "set optimizer.learning_rate (and optimizer.schedule) instead",
    "weight_decay": "set optimizer.weight_decay instead (it is passed on as this argument)",
    "mask": "the weight-decay mask is fntrain's (matrices and kernels); use optimizer.groups to change it per parameter",
}


@functools.cache
def aliases() -> dict[str, Callable]:
    """``{"adam": optax.adam, ..., "contrib.prodigy": optax.contrib.prodigy}``: every name ``optax:NAME`` takes."""
    import optax.contrib

    found = {}
    for module, prefix in ((optax, ""), (optax.contrib, "contrib.")):
        for name in sorted(dir(module)):
            fn = getattr(module, name)
            if name.startswith(("_", "scale_by")) or not inspect.isfunction(fn):
                continue
            params = list(inspect.signature(fn).parameters)
            if params and params[0] == "learning_rate" and prefix + name not in UNSUPPORTED:
                found[prefix + name] = fn
    return found


def lookup(name: str) -> Callable:
    """The optax function ``optax.<name>``.

    Raises:
      ValueError: an unknown or unsupported name, with a suggestion.
    """
    if name in UNSUPPORTED:
        raise ValueError(f"optax.{name} is not supported: {UNSUPPORTED[name]}")
    known = aliases()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"; did you mean 'optax:{close[0]}'?" if close else ""
        raise ValueError(f"unknown optax optimizer {name!r}{hint} (optax:NAME takes {', '.join(known)})")
    return known[name]


def suggest(name: str) -> Optional[str]:
    """``optax:NAME`` for a plain name that is an optax optimizer (``lion`` -> ``optax:lion``)."""
    if name in aliases():
        return f"optax:{name}"
    close = difflib.get_close_matches(name, list(aliases()), n=1)
    return f"optax:{close[0]}" if close else None


def signature_text(name: str) -> str:
    """``optax.lion(learning_rate, b1=0.9, b2=0.99, mu_dtype=None, weight_decay=0.001, mask=None)``."""
    parts = []
    for p in inspect.signature(aliases()[name]).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        else:
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"optax.{name}({', '.join(parts)})"


def parameters(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(aliases()[name]).parameters)


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Each key must be a parameter of ``optax.<name>`` other than the reserved ones.

    Raises:
      ValueError: ``"<key>: not a parameter of optax.lion(...)"``, the first part the key.
    """
    params = parameters(name)
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in kwargs:
        if key in RESERVED and key in params:
            raise ValueError(f"{key}: {RESERVED[key]}")
        if key not in params and not open_ended:
            close = difflib.get_close_matches(key, [p for p in params if p not in RESERVED], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{key}: not a parameter of {signature_text(name)}{hint}")


def takes_schedule(name: str) -> bool:
    """Whether ``learning_rate`` may be a schedule (optax annotates it ``ScalarOrSchedule``)."""
    return "Callable" in str(parameters(name)["learning_rate"].annotation)
