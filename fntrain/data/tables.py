"""CSV tables of numbers, one example per row, read as UTF-8."""

from __future__ import annotations

import csv
import io
import os
from typing import Optional

import numpy as np

from fntrain.data.checks import Part
from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays

__all__ = ["csv_part", "load_csv", "load_csv_matrix"]


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _read_rows(path: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of the non-blank rows of a UTF-8 CSV file (a BOM is skipped)."""
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise DataError(f"{path}: delimiter {delimiter!r} must be a single character; expected e.g. ',', ';' or "
                        "'\\t' (set data.delimiter)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; expected a CSV file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: byte 0x{raw[e.start]:02x} is not UTF-8; expected a UTF-8 text file: "
                        "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for r in reader:
            if r and any(c.strip() for c in r):
                rows.append((reader.line_num, r))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: {e}; expected a CSV table of numbers") from None
    return rows


def _target_index(path: str, target_column: int | str, names: list[str] | None, width: int) -> int:
    if isinstance(target_column, str):
        if names is None:
            raise DataError(f"{path}: target_column={target_column!r} is a name but the file has no header row; "
                            "pass an int index or header=True")
        if target_column not in names:
            raise DataError(f"{path}: no column named {target_column!r}; columns: {names}")
        return names.index(target_column)
    t = int(target_column)
    if not -width <= t < width:
        raise DataError(f"{path}: target_column={t} out of range for {width} columns")
    return t % width


def _parse(path: str, body, width: int, names) -> np.ndarray:
    values = np.empty((len(body), width), dtype=np.float64)
    for i, (line, r) in enumerate(body):
        if len(r) != width:
            raise DataError(f"{path}: line {line} has {len(r)} fields; expected {width}")
        for j, cell in enumerate(r):
            try:
                values[i, j] = float(cell)
            except ValueError:
                col = f"{j + 1} ({names[j]!r})" if names is not None else f"{j + 1}"
                raise DataError(f"{path}: line {line}, column {col}: non-numeric value {cell!r}; expected a "
                                "number") from None
    return values


def csv_part(
    path: str | os.PathLike,
    *,
    target_column: int | str = -1,
    header: bool | None = None,
    delimiter: str = ",",
    target_dtype: str = "int",
) -> Part:
    """``load_csv``'s arrays as a :class:`~fntrain.data.checks.Part` whose rows are named
    by their line in the file (arguments as for :func:`load_csv`)."""
    path = os.fspath(path)
    if target_dtype not in ("int", "float"):
        raise DataError(f"load_csv: target_dtype must be 'int' or 'float', got {target_dtype!r}")
    names, body = _header_and_body(path, delimiter, header)
    width = len(names) if names is not None else len(body[0][1])
    if width < 2:
        raise DataError(f"{path}: {width} column(s); expected at least one feature column and a target column")
    t = _target_index(path, target_column, names, width)
    values = _parse(path, body, width, names)
    lines = [line for line, _ in body]

    x = np.delete(values, t, axis=1).astype(np.float32)
    target = values[:, t]
    if target_dtype == "int":
        bad = np.flatnonzero(~np.isfinite(target) | (target != np.round(target)))
        if len(bad):
            raise DataError(f"{path}: line {lines[bad[0]]}: target {body[bad[0]][1][t]!r} is not an integer; expected "
                            "class labels or target_dtype='float'")
        y = target.astype(np.int32)
    else:
        y = target.astype(np.float32)[:, None]
    columns = [f"{j + 1} ({names[j]!r})" if names is not None else f"{j + 1}" for j in range(width) if j != t]
    target = f"column {t + 1} ({names[t]!r})" if names is not None else f"column {t + 1}"
    return Part(Arrays(x, y), path, f"{path}: {target}", lambda r: f"line {lines[r]}", columns)


def load_csv(
    path: str | os.PathLike,
    *,
    target_column: int | str = -1,
    header: bool | None = None,
    delimiter: str = ",",
    target_dtype: str = "int",
) -> Arrays:
    """Load a numeric CSV table (UTF-8), one example per row.

    Args:
      path: path to the CSV file. Blank lines are skipped.
      target_column: index (negative counts from the end) or header name of the target
        column; every other column is a feature.
      header: True if the first row is a header, False if not, None to auto-detect
        (header iff some first-row field is non-numeric).
      delimiter: field separator, one character.
      target_dtype: "int" for class labels or "float" for regression.

    Returns:
      Arrays with x: [N, F] float32 and y: [N] int32 ("int") or [N, 1] float32 ("float").

    Raises:
      DataError: missing file, bad options, a file that is not UTF-8, ragged rows, or a
        non-numeric cell (message gives path, line and column).
    """
    return csv_part(path, target_column=target_column, header=header, delimiter=delimiter,
                    target_dtype=target_dtype).arrays


def load_csv_matrix(path: str | os.PathLike, *, header: bool | None = None, delimiter: str = ",") -> np.ndarray:
    """A numeric CSV table (UTF-8) with no target column, e.g. the inputs of ``fntrain predict``.

    Args:
      path, header, delimiter: as for :func:`load_csv` (a header row is auto-detected the same way).

    Returns:
      ``[N, F] float64``, one row per non-blank line.

    Raises:
      DataError: as for :func:`load_csv`.
    """
    path = os.fspath(path)
    names, body = _header_and_body(path, delimiter, header)
    return _parse(path, body, len(names) if names is not None else len(body[0][1]), names)


def _header_and_body(path: str, delimiter, header: Optional[bool]):
    """``(column names or None, data rows)`` of a CSV file; ``header`` None: a first row
    that is not all numbers is the header.

    Raises:
      DataError: the file has no rows, or none after its header.
    """
    rows = _read_rows(path, delimiter)
    if not rows:
        raise DataError(f"{path}: no rows; expected a CSV table")
    if header is None:
        header = not all(_is_number(c) for c in rows[0][1])
    names = [c.strip() for c in rows[0][1]] if header else None
    body = rows[1:] if header else rows
    if not body:
        raise DataError(f"{path}: no data rows after the header")
    return names, body
