"""What may change when a run is resumed: configs compared as plain dicts, by dotted key.

A resumed run continues the same experiment. Keys that say how long it runs, how often
it logs, evaluates and checkpoints, where it lives and on how many devices may change
(:data:`RESUMABLE`); a change to any other key (the seed, the data, the model, the
optimizer, ...) would silently make a different run out of the first part's
checkpoint, so ``--resume`` refuses it, naming each changed key with its old and new
value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

# Exact dotted keys, or "section.*" for all keys under a section.
RESUMABLE = (
    "output_dir",  # the run directory was moved
    "callbacks",
    "callbacks.*",
    "loop.num_epochs",  # extend or shorten the run (a schedule over total steps follows it)
    "loop.num_steps",
    "loop.eval_every_epochs",
    "loop.eval_every_steps",
    "loop.steps_per_dispatch",  # how steps are grouped into dispatches, not what they compute
    "loop.on_nonfinite",  # the fix an exit 3 suggests
    "log.*",
    "checkpoint.every_steps",
    "checkpoint.every_minutes",
    "checkpoint.keep",
    "checkpoint.resume",
    "data.eval_batch_size",  # evaluation batching; the metrics are exact over the split
    "data.on_device",  # where the training split is kept
    "parallel.*",  # checkpoints restore across device counts and shardings
)

ABSENT = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()  # a key one of the configs lacks


class Change(NamedTuple):
    """One dotted key whose value differs: ``old`` or ``new`` is :data:`ABSENT` where missing."""

    key: str
    old: Any
    new: Any



def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": [1, 2]}`` (lists stay whole)."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changes(old: dict, new: dict) -> list[Change]:
    """The keys whose values differ between two plain config dicts, sorted."""
    a, b = flatten(old), flatten(new)
    found = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, ABSENT), b.get(key, ABSENT)
        if va != vb or (type(va) is not type(vb) and not _same_number(va, vb)):  # True == 1, yet a change
            found.append(Change(key, va, vb))
    return [c for c in found if not (c.key == "output_dir" and _same_dir(c.old, c.new))]


def _same_number(a, b) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and a == b


def _same_dir(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (TypeError, OSError):
        return False


def resumable(key: str) -> bool:
    """Whether ``key`` may change when a run is resumed (see :data:`RESUMABLE`)."""
    return any(key == pattern or (pattern.endswith(".*") and key.startswith(pattern[:-1])) for pattern in RESUMABLE)


def short(value: Any, width: int = 40) -> str:
    """A value as JSON, cut to ``width`` characters."""
    if value is ABSENT:
        return "(absent)"
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def describe(found: list[Change]) -> str:
    """``"seed 0 -> 1, model.dropout_rate 0.2 -> 0.1"``."""
    return ", ".join(f"{c.key} {short(c.old)} -> {short(c.new)}" for c in found)
