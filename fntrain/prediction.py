"""Predictions to and from files: the inputs of ``fntrain predict`` and the ``.npz`` it writes.

Inputs are ``.npz`` (one array, chosen by key), ``.npy`` or numeric ``.csv`` (one example
per row, a header row detected as ``fntrain.data.load_csv`` does; a flat row is reshaped
to the network's input shape when the sizes agree, so digits' ``(8, 8, 1)`` reads from 64
columns). Nothing is unpickled.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from fntrain import storage
from fntrain.data import load_csv_matrix
from fntrain.errors import ConfigError

__all__ = ["prediction_arrays", "read_inputs", "write_predictions"]

SUFFIXES = (".npz", ".npy", ".csv")


def _from_npz(path: Path, key: Optional[str]) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        names = list(f.files)
        if key is None:
            key = "x" if "x" in names or len(names) != 1 else names[0]
        if key not in names:
            raise ConfigError(f"{path}: no array {key!r}; it holds {names or 'no arrays'}: pick one with --key NAME")
        return f[key]


def read_inputs(path, *, key: Optional[str] = None, input_shape: tuple[int, ...] = ()) -> np.ndarray:
    """The input rows ``[N, ...]`` in a ``.npz``, ``.npy`` or ``.csv`` file.

    Args:
      path: the file; its suffix says its format.
      key: the ``.npz`` array (default ``x``, or the only array).
      input_shape: one example's shape, to which flat CSV rows are reshaped when the sizes agree.

    Raises:
      ConfigError: a missing or unreadable file, an unknown suffix or key, or a pickled array.
      DataError: a CSV cell that is not a number (naming the line and column).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{path}: expected a .npz, .npy or .csv file of inputs, got {suffix or 'no suffix'!r}")
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; expected a {suffix} file of inputs")
    if key is not None and suffix != ".npz":
        raise ConfigError(f"{path}: --key picks an array of a .npz file; a {suffix} file holds one")
    if suffix == ".csv":
        x = load_csv_matrix(path)
        if input_shape and x.shape[1:] != tuple(input_shape) and x.shape[1] == math.prod(input_shape):
            x = x.reshape(len(x), *input_shape)
        return x
    try:
        return _from_npz(path, key) if suffix == ".npz" else np.load(path, allow_pickle=False)
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: cannot read it as {suffix} ({detail}); expected numeric arrays, not pickled") from None


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # = 1 / (1 + e^-z), no overflow


def prediction_arrays(outputs: np.ndarray, head: str) -> dict[str, np.ndarray]:
    """What ``fntrain predict`` writes for a network's ``outputs [N, ..., O]``.

    ``outputs`` always; for ``head == "classes"`` (softmax cross-entropy) also
    ``classes [N, ...] int32`` (the argmax) and ``probabilities`` (the softmax over the
    last axis); for ``"binary"`` (sigmoid cross-entropy) ``classes`` (``outputs > 0``, same
    shape) and ``probabilities`` (the sigmoid). ``"outputs"``: regression values only.
    """
    arrays = {"outputs": outputs}
    if head == "classes":
        arrays.update(classes=outputs.argmax(axis=-1).astype(np.int32), probabilities=_softmax(outputs))
    elif head == "binary":
        arrays.update(classes=(outputs > 0).astype(np.int32), probabilities=_sigmoid(outputs))
    return arrays


def write_predictions(path, arrays: dict[str, np.ndarray]) -> Path:
    """Writes ``arrays`` to the ``.npz`` file ``path`` atomically (never a half-written file).

    Raises:
      StorageError: the file cannot be written.
    """
    path = Path(path)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.atomic_write(path, buffer.getvalue())
    return path
