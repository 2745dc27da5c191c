"""A generated sequence task whose answer lies in the order of the steps.

``make_sequence_order`` places one +1 (``A``) and one -1 (``B``) among noise. Every example
holds the same values up to the noise, whatever its label, so a model that ignores order
(any function of the set of step values: sums, means, histograms) is at chance, while a
recurrent or convolutional network that reads the steps in order can solve it.
"""

from __future__ import annotations

import numpy as np

from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays

__all__ = ["make_sequence_order"]


def make_sequence_order(num_examples: int = 2000, seq_len: int = 20, *, target: str = "order", seed: int = 0) -> Arrays:
    """Sequences of noise with one marker ``A = +1`` and one ``B = -1`` at distinct random steps.

    Noise steps are uniform on ``[-0.5, 0.5]``, so the markers stand out by value, not place.

    Args:
        num_examples: N, number of sequences.
        seq_len: T, steps per sequence (>= 2).
        target: ``"order"``: ``y`` is 1 if ``A`` comes before ``B``, else 0 (balanced in
            expectation; chance is 50%); ``"gap"``: ``y = (t_B - t_A) / (T - 1)`` in ``[-1, 1]``,
            a regression target whose variance (about 1/3) no order-free model can explain.
        seed: numpy generator seed; same seed gives identical data.

    Returns:
        Arrays with x: [N, T] float32 (one feature per step) and y: [N] int32 (order) or
        [N] float32 (gap).
    """
    if num_examples < 1 or seq_len < 2:
        raise DataError(f"make_sequence_order: need num_examples >= 1 and seq_len >= 2, got {num_examples} and {seq_len}")
    if target not in ("order", "gap"):
        raise DataError(f"make_sequence_order: target must be 'order' or 'gap', got {target!r}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.5, 0.5, size=(num_examples, seq_len))
    # Two distinct positions per row: the first two of a random permutation of the steps.
    positions = np.argsort(rng.random((num_examples, seq_len)), axis=1)[:, :2]
    t_a, t_b = positions[:, 0], positions[:, 1]
    rows = np.arange(num_examples)
    x[rows, t_a], x[rows, t_b] = 1.0, -1.0
    if target == "order":
        return Arrays(x=x.astype(np.float32), y=(t_a < t_b).astype(np.int32))
    return Arrays(x=x.astype(np.float32), y=((t_b - t_a) / (seq_len - 1)).astype(np.float32))
