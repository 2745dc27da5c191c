"""Datasets for fntrain: loaders, checks, splits and resumable batch iterators.

Arrays are numpy, or :class:`RowView` s for `.npy` files read a batch at a time; JAX is
used only for PRNG-driven permutations.
"""

from fntrain.data.checks import MAX_INFERRED_CLASSES, Part, Targets, check_array, check_part, label_range
from fntrain.data.errors import DataError
from fntrain.data.idx import load_idx, read_idx
from fntrain.data.iterator import (
    BatchIterator,
    IteratorState,
    eval_batches,
    example_weights,
    gather_batch,
    pad_batch,
    pad_rows,
)
from fntrain.data.lazy import RowView, is_lazy, open_npy, take, transform
from fntrain.data.npfiles import load_npy, load_npz, npz_parts
from fntrain.data.prefetch import Prefetcher, prefetch
from fntrain.data.sequences import make_sequence_order
from fntrain.data.sources import Arrays, load_digits, make_classification, make_regression
from fntrain.data.splits import Splits, complete_splits, load_splits, moments, split_arrays, standardize
from fntrain.data.tables import csv_part, load_csv, load_csv_matrix
from fntrain.data.text import decode, load_char_lm, unigram_baseline

__all__ = [
    "MAX_INFERRED_CLASSES",
    "Arrays",
    "BatchIterator",
    "DataError",
    "IteratorState",
    "Part",
    "Prefetcher",
    "RowView",
    "Splits",
    "Targets",
    "check_array",
    "check_part",
    "complete_splits",
    "csv_part",
    "decode",
    "eval_batches",
    "example_weights",
    "gather_batch",
    "is_lazy",
    "label_range",
    "load_char_lm",
    "load_csv",
    "load_csv_matrix",
    "load_digits",
    "load_idx",
    "load_npy",
    "load_npz",
    "load_splits",
    "make_classification",
    "make_regression",
    "make_sequence_order",
    "moments",
    "npz_parts",
    "open_npy",
    "pad_batch",
    "pad_rows",
    "prefetch",
    "read_idx",
    "split_arrays",
    "standardize",
    "take",
    "transform",
    "unigram_baseline",
]
