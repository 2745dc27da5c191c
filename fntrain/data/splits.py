"""Train/val/test splitting and train-statistics standardization.

Arrays in memory are split into copies, as always; arrays read from disk
(:class:`~fntrain.data.lazy.RowView`) into views of row indices, and their statistics are
computed in one streaming pass, so neither is ever read whole.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import jax
import numpy as np

from fntrain.data import lazy
from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays

__all__ = ["Splits", "complete_splits", "load_splits", "moments", "split_arrays", "standardize"]


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
        Splits; a fraction of 0 gives None for that split. Arrays in memory are copied;
        ``RowView`` s of a file become views of the chosen rows (nothing is read).

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
        return Arrays(x=lazy.take(arrays.x, idx), y=lazy.take(arrays.y, idx))

    test = take(perm[:n_test]) if n_test else None
    val = take(perm[n_test:n_test + n_val]) if n_val else None
    train = take(perm[n_test + n_val:])
    return Splits(train=train, val=val, test=test)


def complete_splits(
    given: Mapping[str, Arrays],
    *,
    val_fraction: float,
    test_fraction: float,
    key: jax.Array,
) -> Splits:
    """The splits a source gave, with only the missing ones carved out of train.

    With train alone this is ``split_arrays(train, ...)``. A val or test split the source
    gives is used as it is, its fraction ignored; a missing one gets its fraction of the
    training examples, cut as ``split_arrays`` cuts them (test first, then val).

    Args:
      given: ``{"train": Arrays, "val"?: Arrays, "test"?: Arrays}``.
      val_fraction, test_fraction: fractions of the training examples, for missing splits.
      key: JAX PRNG key of the permutation.

    Raises:
      DataError: no train split, an unknown split name, examples whose shape differs from
        train's, or fractions that leave no training data.
    """
    unknown = sorted(set(given) - {"train", "val", "test"})
    if "train" not in given or unknown:
        raise DataError(f"splits must be named train, val and test, with train present; got {sorted(given)}")
    train = given["train"]
    for name in ("val", "test"):
        other = given.get(name)
        if other is not None and tuple(other.x.shape[1:]) != tuple(train.x.shape[1:]):
            raise DataError(f"the {name} split's examples have shape {tuple(other.x.shape[1:])} but the training "
                            f"split's have {tuple(train.x.shape[1:])}; expected the same shape")
    carved = split_arrays(
        train,
        val_fraction=0.0 if "val" in given else val_fraction,
        test_fraction=0.0 if "test" in given else test_fraction,
        key=key,
    )
    return Splits(train=carved.train, val=given.get("val", carved.val), test=given.get("test", carved.test))


def moments(a, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` per feature of ``a [N, ...]`` in float64, ``[...]`` each; stds below
    ``eps`` become 1. Arrays read from disk are read once, in blocks (Chan's merge)."""
    if not lazy.is_lazy(a):
        x = np.asarray(a, dtype=np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
    else:
        count, mean, m2 = 0, 0.0, 0.0
        for block in lazy.blocks(a):
            b = np.asarray(block, np.float64)
            n, b_mean = len(b), b.mean(axis=0)
            b_m2 = ((b - b_mean) ** 2).sum(axis=0)
            delta, total = b_mean - mean, count + n
            mean = mean + delta * (n / total)
            m2 = m2 + b_m2 + delta**2 * (count * n / total)
            count = total
        std = np.sqrt(m2 / count)
    # A feature constant in training is only centred: dividing by ~0 would blow up
    # whatever it is in val or test (the digits corner pixels are such features).
    return mean, np.where(std < eps, 1.0, std)


def standardize(
    splits: Splits, eps: float = 1e-6
) -> tuple[Splits, tuple[np.ndarray, np.ndarray]]:
    """Standardize x per feature with statistics of the training split only.

    Args:
        splits: Splits whose x arrays are [N, ...] with matching feature shapes.
        eps: stds below this count as constant features, which are centred but not scaled.

    Returns:
        (standardized splits, (mean, std)) with mean/std: [...] float32 (the
        per-example feature shape). y arrays are unchanged. Arrays read from disk come
        back as views that standardize each batch as it is read.
    """
    mean, std = moments(splits.train.x, eps)

    def scale(x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)

    def apply(a: Arrays | None) -> Arrays | None:
        return None if a is None else Arrays(x=lazy.transform(a.x, scale), y=a.y)

    out = Splits(train=apply(splits.train), val=apply(splits.val), test=apply(splits.test))
    return out, (mean.astype(np.float32), std.astype(np.float32))


def load_splits(config: Any, overrides: tuple[str, ...] = (), *, seed: Optional[int] = None) -> Splits:
    """The train/val/test splits ``fntrain train`` uses for a config, row for row.

    A run draws its split key from the seed (``fntrain.experiment.seed_keys(seed)["split"]``),
    so ``split_arrays(..., key=jax.random.key(seed))`` gives other rows; this does what the
    run does, checks included.

    Args:
      config: a ``fntrain.Config``, or the path of a YAML config.
      overrides: dotted ``key=value`` overrides, for a path.
      seed: the seed to split with; None: the config's.

    Example:
      >>> splits = fntrain.data.load_splits("configs/digits_mlp.yaml")
      >>> splits.test.x.shape
      (180, 8, 8, 1)
    """
    from fntrain.config import load_config  # the config package builds on this one
    from fntrain.experiment import build_splits

    if not hasattr(config, "data"):
        config = load_config(config, list(overrides))
    if seed is not None:
        config = config.model_copy(update={"seed": seed})
    return build_splits(config)
