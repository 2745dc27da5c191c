"""Datasets for fntrain: loaders, splits and resumable batch iterators.

All arrays are numpy; JAX is used only for PRNG-driven permutations.
"""

from fntrain.data.errors import DataError
from fntrain.data.iterator import BatchIterator, IteratorState, eval_batches, example_weights, pad_batch, pad_rows
from fntrain.data.sources import (
    Arrays,
    load_csv,
    load_digits,
    load_idx,
    load_npz,
    make_classification,
    make_regression,
    read_idx,
)
from fntrain.data.sequences import make_sequence_order
from fntrain.data.splits import Splits, split_arrays, standardize
from fntrain.data.text import decode, load_char_lm, unigram_baseline

__all__ = [
    "Arrays",
    "BatchIterator",
    "DataError",
    "IteratorState",
    "Splits",
    "decode",
    "eval_batches",
    "example_weights",
    "load_char_lm",
    "load_csv",
    "load_digits",
    "load_idx",
    "load_npz",
    "make_classification",
    "make_regression",
    "make_sequence_order",
    "pad_batch",
    "pad_rows",
    "read_idx",
    "split_arrays",
    "standardize",
    "unigram_baseline",
]
