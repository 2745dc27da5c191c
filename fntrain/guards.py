"""Checks that a jitted step runs the way it should: compiled once, its input buffers donated.

Both failures are silent in JAX. A step that compiles again on every new shape or dtype
runs at compile speed; a donation that did not happen doubles the state's memory.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import jax


class RecompileWarning(UserWarning):
    """A jitted function compiled again for inputs of a new shape, dtype or structure."""


class DonationWarning(UserWarning):
    """A jitted function was asked to donate its input buffers but kept them."""


Signature = dict[str, tuple[str, tuple[int, ...]]]


def signature(tree: Any) -> Signature:
    """``{path: (dtype, shape)}`` for every leaf, e.g. ``{"[1][0]": ("float32", (128, 784))}``."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): (str(leaf.dtype), tuple(leaf.shape)) for path, leaf in leaves}


def describe_change(old: Signature, new: Signature) -> str:
    """What differs between two signatures, e.g. ``[1][0]: float32[128,784] -> float32[57,784]``."""

    def show(entry):
        return "absent" if entry is None else f"{entry[0]}[{','.join(map(str, entry[1]))}]"

    changes = [f"{path}: {show(old.get(path))} -> {show(new.get(path))}"
               for path in {**old, **new} if old.get(path) != new.get(path)]
    return "; ".join(changes) if changes else "no shape or dtype changed (a sharding, weak type or static argument did)"


class CompileGuard:
    """Calls a jitted function and warns when a call compiles it again, naming what changed.

    ``allowed(old, new)`` decides which new signatures are expected (the training loop
    expects shorter fused dispatches and a final partial batch); anything else, such as a
    dtype that drifts or a state that changes shape, warns with a ``RecompileWarning``.
    Each warning names the argument leaves that changed, e.g.
    ``train_step compiled again: [0].params['dense_1']['w']: float32[64,10] -> float64[64,10]``.

    Compilations are counted with the jitted function's cache size; where that is not
    available the guard only passes calls through.

    Example:
      >>> step = CompileGuard(make_train_step(loss_fn, opt), "train_step")
      >>> ts, metrics = step(ts, batch)
    """

    def __init__(self, fn: Callable, name: str, *, allowed: Optional[Callable[[Signature, Signature], bool]] = None):
        self.fn, self.name, self.allowed = fn, name, allowed
        self._cache_size = getattr(fn, "_cache_size", None)
        self.compiles = 0
        self.signatures: list[Signature] = []

    def __call__(self, *args):
        out = self.fn(*args)
        if self._cache_size is not None and self._cache_size() > self.compiles:
            self.compiles = self._cache_size()
            self._compiled(signature(args))
        return out

    def _compiled(self, new: Signature) -> None:
        if self.signatures:
            old = self.signatures[-1]
            if self.allowed is None or not self.allowed(old, new):
                warnings.warn(
                    f"{self.name} compiled again (compilation {len(self.signatures) + 1}): {describe_change(old, new)}. "
                    "Each new input shape or dtype compiles once more; keep them fixed.",
                    RecompileWarning,
                    stacklevel=3,
                )
        self.signatures.append(new)

    def __getattr__(self, attr):  # lower(), trace(), ... of the jitted function
        return getattr(self.fn, attr)


def undonated(donated: Any) -> list[str]:
    """Paths of the array leaves of ``donated`` that still hold their buffers after the call
    that was to donate them (donation is a request, which XLA may decline)."""
    return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(donated)
            if isinstance(leaf, jax.Array) and not leaf.is_deleted()]


def check_donation(donated: Any, name: str) -> bool:
    """Warns with a ``DonationWarning`` naming the leaves of ``donated`` that were not donated."""
    kept = undonated(donated)
    if kept:
        more = f" and {len(kept) - 5} more" if len(kept) > 5 else ""
        warnings.warn(
            f"{name} did not donate {len(kept)} input buffer(s) ({', '.join(kept[:5])}{more}): the old and new "
            "state are both held in memory. XLA declines to donate a buffer whose shape, dtype or sharding "
            "matches no output.",
            DonationWarning,
            stacklevel=2,
        )
    return not kept
