"""`Arrays`, and the embedded and generated data sources.

Every loader returns numpy arrays; nothing here downloads or unpickles. The file loaders
live beside this module: `npfiles` (`.npz`, `.npy`), `idx` (MNIST's format), `tables` (CSV).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fntrain.data.errors import DataError

__all__ = ["Arrays", "DataError", "load_digits", "make_classification", "make_regression"]


class Arrays(NamedTuple):
    """A dataset as a pair of aligned arrays.

    Attributes:
        x: [N, ...] inputs: a NumPy array, or a ``fntrain.data.RowView`` of a file read a
            batch at a time (``x[rows]`` and ``x[a:b]`` give NumPy arrays either way).
        y: [N, ...] targets, likewise.
    """

    x: np.ndarray
    y: np.ndarray

    @property
    def num_examples(self) -> int:
        """N, the number of examples."""
        return int(self.x.shape[0])


# --- embedded / synthetic -------------------------------------------------


def load_digits() -> Arrays:
    """scikit-learn's embedded 8x8 handwritten digits (no download).

    Returns:
        Arrays with x: [1797, 8, 8, 1] float32 in [0, 1] and
        y: [1797] int32 in 0..9.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    return Arrays(x=x, y=bunch.target.astype(np.int32))


def make_classification(
    num_examples: int = 1000,
    num_features: int = 20,
    num_classes: int = 3,
    *,
    seed: int = 0,
    class_sep: float = 2.0,
) -> Arrays:
    """Gaussian-cluster classification data, one unit-variance cluster per class.

    Class centers are drawn from N(0, class_sep^2 / num_features) per feature
    so that the expected distance between centers is about class_sep * sqrt(2)
    regardless of num_features. Labels are balanced up to rounding and shuffled.

    Args:
        num_examples: N, number of examples.
        num_features: F, input dimension.
        num_classes: C, number of classes (>= 2).
        seed: numpy generator seed; same seed gives identical data.
        class_sep: scale of the class centers; larger is easier.

    Returns:
        Arrays with x: [N, F] float32 and y: [N] int32 in 0..C-1.
    """
    if num_examples < 1 or num_features < 1:
        raise DataError(f"make_classification: num_examples and num_features must "
                        f"be >= 1, got {num_examples} and {num_features}")
    if num_classes < 2:
        raise DataError(f"make_classification: num_classes must be >= 2, got {num_classes}")
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, class_sep / np.sqrt(num_features),
                         size=(num_classes, num_features))
    y = rng.permutation(np.arange(num_examples) % num_classes)
    x = centers[y] + rng.normal(size=(num_examples, num_features))
    return Arrays(x=x.astype(np.float32), y=y.astype(np.int32))


def make_regression(
    num_examples: int = 1000,
    num_features: int = 8,
    num_outputs: int = 1,
    *,
    noise: float = 0.1,
    seed: int = 0,
) -> Arrays:
    """Linear regression data plus a mild sinusoidal nonlinearity.

    y = x @ W + b + 0.1 * sin(x[:, :1]) + noise * eps, with x, eps ~ N(0, 1),
    W ~ N(0, 1/F) and b ~ N(0, 1). The sin term (same for every output) keeps
    the task from being exactly linear without dominating it.

    Args:
        num_examples: N, number of examples.
        num_features: F, input dimension.
        num_outputs: O, target dimension.
        noise: standard deviation of the additive Gaussian noise.
        seed: numpy generator seed; same seed gives identical data.

    Returns:
        Arrays with x: [N, F] float32 and y: [N, O] float32.
    """
    if num_examples < 1 or num_features < 1 or num_outputs < 1:
        raise DataError(f"make_regression: num_examples, num_features and num_outputs "
                        f"must be >= 1, got {num_examples}, {num_features}, {num_outputs}")
    if noise < 0:
        raise DataError(f"make_regression: noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0 / np.sqrt(num_features), size=(num_features, num_outputs))
    b = rng.normal(size=(num_outputs,))
    x = rng.normal(size=(num_examples, num_features))
    y = x @ w + b + 0.1 * np.sin(x[:, :1]) + noise * rng.normal(size=(num_examples, num_outputs))
    return Arrays(x=x.astype(np.float32), y=y.astype(np.float32))
