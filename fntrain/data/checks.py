"""Checks that refuse bad data before training, naming the file, the array and the row.

Each split a source gives is a :class:`Part`: its arrays plus the names messages use
(``"data/mnist.npz: array 'x_test'"``) and how a row is called (``"row 17"``, or ``"line
19"`` for a CSV file). :func:`check_part` refuses what would otherwise train to NaN or to
nonsense, with a one-line ``DataError``:

* an array with no rows, or of a type that is not numbers (strings, objects, complex);
* NaN or infinity in float inputs or targets;
* class labels (as the loss says, through :class:`Targets`) that are not integers, are
  negative, reach the model's fixed number of outputs, or are so large that inferring one
  output per class would build an absurd output layer (more than ``MAX_INFERRED_CLASSES``).

Arrays read from disk (:class:`~fntrain.data.lazy.RowView`) are checked as a stream of
blocks, never loaded whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

import numpy as np

from fntrain.data import lazy
from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays

__all__ = ["MAX_INFERRED_CLASSES", "Part", "Targets", "check_array", "check_part", "label_range"]

# Inferring one output per class from labels up to this many; a larger label is far more
# likely an id or a bad value than a class (10^9 would allocate gigabytes of weights).
MAX_INFERRED_CLASSES = 100_000


def row_name(row: int) -> str:
    return f"row {row}"


class Part(NamedTuple):
    """One split as its source gave it, with the names its messages use.

    Attributes:
      arrays: ``x [N, ...]``, ``y [N, ...]``.
      x_name: the inputs as a message names them, e.g. ``"data/d.npz: array 'x_test'"``.
      y_name: the targets likewise.
      row_name: ``row_name(i)`` names row ``i`` (``"row 17"``; a CSV file: ``"line 19"``).
      x_columns: names of the columns of 2-D inputs ``[N, F]`` (a CSV file's header);
        None: elements are named by their index.
    """

    arrays: Arrays
    x_name: str
    y_name: str
    row_name: Callable[[int], str] = row_name
    x_columns: Optional[Sequence[str]] = None


class Targets(NamedTuple):
    """What the loss makes of the targets, for the checks before training.

    Attributes:
      kind: ``"classes"``: class labels, one output per class (softmax cross-entropy, a
        user's loss); ``"binary"``: integer labels must be 0 or 1 (sigmoid binary
        cross-entropy); ``"any"``: no label checks (regression losses, an objective).
      num_classes: the model's fixed number of outputs (``model.num_outputs``); None:
        inferred from the labels, at most ``MAX_INFERRED_CLASSES``.
    """

    kind: str = "any"
    num_classes: Optional[int] = None


def _first_bad(block: np.ndarray, bad: np.ndarray) -> tuple[int, tuple, str]:
    """(row in block, element index within the row, value as text) of the first True in ``bad``."""
    flat = int(np.flatnonzero(bad.reshape(-1))[0])
    where = np.unravel_index(flat, bad.shape)
    return int(where[0]), tuple(int(i) for i in where[1:]), str(block[where])  # str: 2.7, not 2.700000047683716


def _at(part_row: Callable[[int], str], row: int, element: tuple, columns: Optional[Sequence[str]] = None) -> str:
    if not element:
        return part_row(row)
    if columns is not None and len(element) == 1:
        return f"{part_row(row)}, column {columns[element[0]]}"
    return f"{part_row(row)}, element {element if len(element) > 1 else element[0]}"


def check_array(
    a, name: str, row: Callable[[int], str] = row_name, *, what: str = "examples",
    columns: Optional[Sequence[str]] = None,
) -> None:
    """Refuses an empty, non-numeric or non-finite array ``a [N, ...]`` named ``name``.

    Raises:
      DataError: ``"{name}: row 17, element 3: value nan; expected finite numbers ..."``.
    """
    if a.ndim == 0:
        raise DataError(f"{name}: a scalar; expected an array [N, ...] with one row per example")
    if len(a) == 0:
        raise DataError(f"{name}: no rows (shape {tuple(a.shape)}); expected at least one example")
    if a.dtype.kind not in "biuf":
        raise DataError(
            f"{name}: dtype {a.dtype} ({_kind(a.dtype)}); expected numbers (bool, int or float {what}): "
            "convert it, e.g. with a.astype(np.float32), or encode text as integer ids"
        )
    if a.dtype.kind != "f":
        return
    start = 0
    for block in _in_order(a):
        bad = ~np.isfinite(block)
        if bad.any():
            r, element, value = _first_bad(block, bad)
            raise DataError(
                f"{name}: {_at(row, start + r, element, columns)}: value {value}; expected finite {what} "
                "(no NaN or inf): drop or impute that row"
            )
        start += len(block)


def _kind(dtype: np.dtype) -> str:
    return {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers", "M": "dates",
            "m": "time spans", "V": "raw records"}.get(dtype.kind, "not numbers")


def label_range(y) -> tuple[int, int]:
    """``(min, max)`` of integer labels ``y``, read in blocks."""
    lo, hi = None, None
    for block in lazy.blocks(y):
        if block.size:
            b_lo, b_hi = int(block.min()), int(block.max())
            lo, hi = b_lo if lo is None else min(lo, b_lo), b_hi if hi is None else max(hi, b_hi)
    return lo, hi


def _first_row(y, bad: Callable[[np.ndarray], np.ndarray]) -> tuple[int, tuple, str]:
    """The first row of ``y`` (in order) where ``bad(block)`` is True, read block by block."""
    start = 0
    for block in _in_order(y):
        mask = bad(block)
        if mask.any():
            r, element, value = _first_bad(block, mask)
            return start + r, element, value
        start += len(block)
    raise AssertionError("no bad row found")


def _in_order(a):
    """Blocks of ``a``'s rows in row order (a view of chosen rows: 65536 rows at a time)."""
    if not lazy.is_lazy(a) or a.index is None:
        yield from lazy.blocks(a)
        return
    for start in range(0, len(a), 1 << 16):
        yield a[start : start + (1 << 16)]


def _distinct(y) -> int:
    seen = np.zeros(0, np.int64)
    for block in lazy.blocks(y):
        seen = np.union1d(seen, np.unique(block))
    return len(seen)


def check_labels(y, name: str, row: Callable[[int], str], targets: Targets):
    """Class labels ``y [N, ...]`` checked against ``targets``; returns them as int32.

    Float labels that are whole numbers (``2.0``) are accepted and converted; ``2.7`` is not.
    """
    if y.dtype.kind == "f":
        fractional = _any(y, lambda b: b != np.round(b))
        if fractional:
            r, element, value = _first_row(y, lambda b: b != np.round(b))
            raise DataError(
                f"{name}: {_at(row, r, element)}: label {value}; a classification loss needs whole-number "
                "class labels 0..C-1: store them as integers, or use a regression loss (loss.name: mse)"
            )
    lo, hi = label_range(y)
    limit = 2 if targets.kind == "binary" else targets.num_classes
    if lo < 0:
        r, element, value = _first_row(y, lambda b: b < 0)
        raise DataError(f"{name}: {_at(row, r, element)}: label {value}; expected class labels 0..C-1 (no negatives)")
    if limit is not None and hi >= limit:
        r, element, value = _first_row(y, lambda b: b >= limit)
        raise DataError(
            f"{name}: {_at(row, r, element)}: label {value}; expected labels 0..{limit - 1} "
            + ("for a binary loss" if targets.kind == "binary" else f"(the model has {limit} outputs): "
               "set model.num_outputs (vocab_size) to null to infer it from the labels, or remap them")
        )
    if limit is None and hi + 1 > MAX_INFERRED_CLASSES:
        r, element, value = _first_row(y, lambda b: b >= MAX_INFERRED_CLASSES)
        raise DataError(
            f"{name}: {_at(row, r, element)}: label {value}; inferring one output per class would give "
            f"{int(hi) + 1:,} outputs, above the {MAX_INFERRED_CLASSES:,} inferred at most (the labels hold "
            f"{_distinct(y):,} distinct values): remap them to 0..K-1, or set model.num_outputs to use more"
        )
    return y if y.dtype == np.int32 else lazy.transform(y, lambda b: b.astype(np.int32))


def _any(a, predicate: Callable[[np.ndarray], np.ndarray]) -> bool:
    return any(bool(predicate(block).any()) for block in lazy.blocks(a))


def is_label_array(y, targets: Targets) -> bool:
    """Whether ``targets`` makes ``y`` class labels: integers of any shape (``[N]``, token
    targets ``[N, T]``), or floats ``[N]`` / ``[N, 1]`` to be checked for whole numbers
    (``[N, C]`` float targets are one-hot or soft)."""
    if targets.kind == "any":
        return False
    if y.dtype.kind in "iub":
        return True
    return targets.kind == "classes" and y.dtype.kind == "f" and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1))


def check_part(part: Part, targets: Targets = Targets()) -> Part:
    """Checks one split's inputs and targets (see the module docstring); class labels come
    back as int32 (float ``[N, 1]`` labels as ``[N]``).

    Raises:
      DataError: the first problem found, naming the array and the row.
    """
    x, y = part.arrays
    check_array(x, part.x_name, part.row_name, what="inputs", columns=part.x_columns)
    check_array(y, part.y_name, part.row_name, what="targets")
    if not is_label_array(y, targets):
        return part
    if y.dtype.kind == "f" and y.ndim == 2:
        y = lazy.transform(y, lambda b: b[:, 0])
    y = check_labels(y, part.y_name, part.row_name, targets)
    return part._replace(arrays=Arrays(x, y))
