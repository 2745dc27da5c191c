"""Caps on what a user's input may cost, and short quotes of it in messages.

A config file, an override or a name a user hands the CLI is refused, with one short line,
before it can take unbounded time, memory or screen: these numbers are the bounds, and
``quote``/``one_line`` keep what a message repeats of the input short and on one line.
"""

from __future__ import annotations

import itertools
import reprlib
from collections.abc import Mapping
from typing import Any

MAX_CONFIG_BYTES = 1 << 20  # a config file is read up to 1 MiB; the shipped ones are ~1 KiB
MAX_YAML_NODES = 100_000  # nodes of a YAML document once its aliases are expanded
MAX_YAML_SCALAR_CHARS = 4 << 20  # characters of its scalars once expanded (4 MiB)
MAX_YAML_DEPTH = 64  # nesting of mappings and lists
MAX_COUNT = 2**31 - 1  # steps, epochs, batch sizes, widths: an int32, as jax counts steps
MAX_QUOTED_CHARS = 80  # of a value repeated in a message
MAX_PROBLEMS = 10  # problems listed in one message, then "and K more"
MAX_MESSAGE_CHARS = 4000  # of the one `error:` line


def shorten(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Repr(reprlib.Repr):
    """``reprlib``'s bounded repr, also for subclasses of dict, list and tuple (frozen config values)."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 4, 2 * MAX_QUOTED_CHARS, MAX_QUOTED_CHARS, 40

    def repr1(self, x, level):
        if isinstance(x, Mapping) and type(x) is not dict:
            x = dict(itertools.islice(x.items(), self.maxdict + 1))
        elif isinstance(x, (list, tuple)) and type(x) not in (list, tuple):
            x = list(itertools.islice(x, self.maxlist + 1))
        return super().repr1(x, level)

    def repr_int(self, x, level):
        if x.bit_length() > 128:  # repr of a huge int is slow, and refused past 4300 digits
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _Repr()


def quote(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters (``'aaaa...`` when cut).

    Formatting is bounded too (``reprlib``): a nested list of a billion items, or a string of
    50 MB, costs no more to quote than a short one.
    """
    try:
        return shorten(_REPR.repr(value), limit)
    except Exception:  # noqa: BLE001 - a user's object whose repr fails
        return f"<{type(value).__name__}>"


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as one printable line: line breaks and control characters escaped, then cut."""
    text = shorten(text, 4 * limit)
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return shorten(out, limit)


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (an error's headline), or ``""``."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def listed(problems: list[str], total: int) -> str:
    """``"a; b; c"``, then ``"; and K more"`` when ``total`` counts more problems than were described."""
    shown = "; ".join(problems)
    return f"{shown}; and {total - len(problems)} more" if total > len(problems) else shown
