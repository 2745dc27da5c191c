"""Train/val/test splitting and train-statistics standardization."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays

__all__ = ["Splits", "split_arrays", "standardize"]


class Splits(NamedTuple):
    """A dataset split three ways; val/test are None when not requested."""

    train: Arrays
    val: Arrays | None
    test: Arrays | None


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise DataError(f"{name} must be in [0, 1), got {value}")


def split_arrays(
    arrays: Arrays,
    *,
    val_fraction: float,
    test_fraction: float,
    key: jax.Array,
) -> Splits:
    """Shuffle once and cut into train/val/test.

    The order is `perm = jax.random.permutation(key, N)`; then
    test = perm[:n_test], val = perm[n_test:n_test + n_val], train = the rest,
    where n_test = round(test_fraction * N) and n_val = round(val_fraction * N).
    Cutting test first means changing val_fraction never changes the test set.

    Args:
        arrays: x [N, ...], y [N, ...].
        val_fraction: fraction of examples for validation, in [0, 1).
        test_fraction: fraction of examples for test, in [0, 1).
        key: JAX PRNG key, e.g. `jax.random.key(0)`.

    Returns:
        Splits; a fraction of 0 gives None for that split.

    Raises:
        DataError: invalid fractions, or a split that would leave train empty
            or a requested split empty.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction must be < 1 to leave training "
                        f"data, got {val_fraction} + {test_fraction}")
    n = arrays.num_examples
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    for name, frac, count in (("val", val_fraction, n_val), ("test", test_fraction, n_test)):
        if frac > 0 and count == 0:
            raise DataError(f"{name}_fraction={frac} of {n} examples rounds to 0 examples; "
                            f"expected at least one (use 0 to disable the split)")
    if n - n_test - n_val < 1:
        raise DataError(f"splitting {n} examples into {n_test} test and {n_val} val "
                        f"leaves no training examples")

    perm = np.asarray(jax.random.permutation(key, n))

    def take(idx: np.ndarray) -> Arrays:
        return Arrays(x=arrays.x[idx], y=arrays.y[idx])

    test = take(perm[:n_test]) if n_test else None
    val = take(perm[n_test:n_test + n_val]) if n_val else None
    train = take(perm[n_test + n_val:])
    return Splits(train=train, val=val, test=test)


def standardize(
    splits: Splits, eps: float = 1e-6
) -> tuple[Splits, tuple[np.ndarray, np.ndarray]]:
    """Standardize x per feature with statistics of the training split only.

    Args:
        splits: Splits whose x arrays are [N, ...] with matching feature shapes.
        eps: stds below this count as constant features, which are centred but not scaled.

    Returns:
        (standardized splits, (mean, std)) with mean/std: [...] float32 (the
        per-example feature shape). y arrays are unchanged.
    """
    train_x = np.asarray(splits.train.x, dtype=np.float64)
    mean = train_x.mean(axis=0)
    # A feature constant in training is only centred: dividing by ~0 would blow up
    # whatever it is in val or test (the digits corner pixels are such features).
    std = train_x.std(axis=0)
    std = np.where(std < eps, 1.0, std)

    def apply(a: Arrays | None) -> Arrays | None:
        if a is None:
            return None
        x = ((np.asarray(a.x, dtype=np.float64) - mean) / std).astype(np.float32)
        return Arrays(x=x, y=a.y)

    out = Splits(train=apply(splits.train), val=apply(splits.val), test=apply(splits.test))
    return out, (mean.astype(np.float32), std.astype(np.float32))
