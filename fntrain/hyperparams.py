"""Hyperparameters that may be traced values: a population passes each member's as data.

Builders branch on a few hyperparameters (no dropout layer at rate 0, no weight decay at
0). Inside a population's step those numbers are JAX tracers, whose value is unknown when
the step is built; such a branch then keeps the general form (a dropout layer, a decay
term), which at 0 computes exactly what leaving it out does.
"""

from __future__ import annotations

import numbers
from typing import Any


def known_zero(value: Any) -> bool:
    """True for a concrete number equal to 0; False for any other number and for a tracer."""
    return isinstance(value, numbers.Number) and value == 0


def is_concrete(value: Any) -> bool:
    """Whether ``value`` is a number known now (a Python or NumPy scalar, not a tracer)."""
    return isinstance(value, numbers.Number)
