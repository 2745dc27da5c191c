"""fntrain/data/checks.py: what is refused, where it is found, and what comes back converted.

The command-line contract (exit 2, one line naming file, array and row) is checked per bad
data class in tests/test_cli.py (BAD_DATA_CASES); these are the checks themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

from fntrain.data import Arrays, DataError, Part, Targets, check_part, is_lazy, load_npy
from fntrain.data import checks, lazy

CLASSES = Targets(kind="classes")


def _part(x, y):
    return Part(Arrays(np.asarray(x), np.asarray(y)), "f.npz: array 'x'", "f.npz: array 'y'")


def test_good_data_passes_and_labels_come_back_int32():
    x, y = np.ones((6, 2), np.float32), np.array([0, 2, 1, 0, 2, 1], np.int64)
    out = check_part(_part(x, y), CLASSES)
    assert out.arrays.y.dtype == np.int32 and out.arrays.x is not None
    np.testing.assert_array_equal(out.arrays.y, y)
    # Whole-number float labels, [N] or [N, 1], are class labels too.
    for labels in (y.astype(np.float64), y.astype(np.float32)[:, None]):
        got = check_part(_part(x, labels), CLASSES).arrays.y
        assert got.dtype == np.int32 and got.shape == (6,)
        np.testing.assert_array_equal(got, y)
    # One-hot targets [N, C] and regression losses are left alone.
    one_hot = np.eye(3, dtype=np.float32)[y]
    assert check_part(_part(x, one_hot), CLASSES).arrays.y is not None
    assert check_part(_part(x, y.astype(np.float32) + 0.5), Targets()).arrays.y.dtype == np.float32


@pytest.mark.parametrize(
    "x, y, targets, match",
    [
        (np.zeros((0, 2)), np.zeros(0), Targets(), r"array 'x': no rows \(shape \(0, 2\)\)"),
        (np.array([["a", "b"]] * 3), np.zeros(3), Targets(), r"array 'x': dtype <U1 \(text\)"),
        (np.ones(3, complex), np.zeros(3), Targets(), r"complex numbers"),
        (np.ones((4, 3)), [0, 1, np.inf, 0], Targets(), r"array 'y': row 2: value inf"),
        (np.ones((4, 3)), [0, 1, -3, 0], CLASSES, r"array 'y': row 2: label -3; expected class labels"),
        (np.ones((4, 3)), [0, 1, 1.5, 0], CLASSES, r"array 'y': row 2: label 1.5; a classification loss"),
        (np.ones((4, 3)), [0, 1, 7, 0], Targets("classes", num_classes=5), r"row 2: label 7; expected labels 0..4"),
        (np.ones((4, 3)), [0, 1, 2, 0], Targets("binary"), r"row 2: label 2; expected labels 0..1"),
        (np.ones((4, 3)), [0, 1, 10**6, 0], CLASSES, r"row 2: label 1000000; .* 1,000,001 outputs, above the 100,000 .* 3 distinct"),
    ],
    ids=["empty", "text", "complex", "inf-target", "negative", "fraction", "beyond-outputs", "binary", "huge"],
)
def test_bad_data_is_refused_naming_array_row_and_value(x, y, targets, match):
    with pytest.raises(DataError, match=match):
        check_part(_part(x, y), targets)


def test_nan_in_a_late_block_of_a_file_is_found_by_streaming_with_its_row(tmp_path, monkeypatch):
    """A file read a batch at a time is checked in blocks (made tiny here), never read whole."""
    monkeypatch.setattr(lazy, "SMALL_FILE_BYTES", 0)  # every file read with pread, even these
    x = np.ones((1000, 4), np.float32)
    x[777, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(1000) % 3)
    arrays = load_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    monkeypatch.setattr(lazy, "BLOCK_BYTES", 4 * 4 * 64)  # 64 rows a block
    reads = []
    read_range = lazy.NpyFile.read_range

    def counted(self, start, stop):
        reads.append(stop - start)
        return read_range(self, start, stop)

    monkeypatch.setattr(lazy.NpyFile, "read_range", counted)
    with pytest.raises(DataError, match=r"x.npy: row 777, element 2: value nan"):
        checks.check_array(arrays.x, str(tmp_path / "x.npy"))
    assert reads and max(reads) <= 64  # blocks, never the whole file
    # Labels read lazily come back as a lazy int32 view.
    y = checks.check_labels(arrays.y, "y.npy", checks.row_name, CLASSES)
    assert is_lazy(y) and y.dtype == np.int32 and y[:5].tolist() == [0, 1, 2, 0, 1]


def test_csv_rows_are_named_by_line_and_column(tmp_path):
    from fntrain.data import csv_part

    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n\n3,inf,1\n")
    with pytest.raises(DataError, match=r"t.csv: line 4, column 2 \('b'\): value inf"):
        check_part(csv_part(path))
