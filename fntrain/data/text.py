"""A character-level language-modelling dataset that ships with Python.

The corpus is the standard library's ``pydoc_data.topics`` (the text behind
``help("topic")``): every ``topics[k]`` concatenated in sorted-key order, about
465k characters over about 100 distinct ones. It needs no download, so a
next-character model can be trained anywhere Python runs.

Example:
  >>> splits, vocab = load_char_lm(seq_len=64)
  >>> splits.train.x.shape, splits.train.x.dtype   # [N, 64] int32 ids into vocab
  >>> decode(splits.train.x[0], vocab)[:20]
  >>> unigram_baseline(splits)                      # nats/char a model must beat
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays
from fntrain.data.splits import Splits

__all__ = ["corpus_text", "decode", "load_char_lm", "unigram_baseline"]


@functools.lru_cache(maxsize=1)
def corpus_text() -> str:
    """The full corpus: ``pydoc_data.topics.topics[k]`` for ``k`` in sorted order, concatenated."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def _windows(ids: np.ndarray, seq_len: int, stride: int) -> Arrays:
    """Windows of ``seq_len + 1`` ids starting at 0, stride, 2*stride, ...; a partial tail is dropped."""
    view = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride]
    return Arrays(x=np.ascontiguousarray(view[:, :-1]), y=np.ascontiguousarray(view[:, 1:]))


def load_char_lm(
    *,
    seq_len: int = 128,
    val_fraction: float = 0.1,
    stride: Optional[int] = None,
    max_chars: Optional[int] = None,
) -> tuple[Splits, str]:
    """Next-character prediction windows over the ``pydoc_data.topics`` corpus.

    The text (its first ``max_chars`` characters if given) is cut once, at
    ``cut = round((1 - val_fraction) * len(text))``: ``text[:cut]`` is train and
    ``text[cut:]`` is val, so no character, input or target, is in both. Each part
    is cut into windows of ``seq_len + 1`` characters starting every ``stride``
    characters from its own start (a partial window at the end is dropped); a
    window gives ``x = window[:-1]`` and ``y = window[1:]``, so ``y[:, t]`` is the
    character that follows ``x[:, t]``. The same arguments always give the same
    arrays.

    Args:
      seq_len: characters per input sequence (>= 1).
      val_fraction: fraction of the text, at its end, held out for validation, in
        [0, 1); 0 gives ``val=None``.
      stride: characters between window starts (>= 1); None means ``seq_len``, i.e.
        non-overlapping windows that cover every character once as a target (bar
        one per window). A smaller stride gives overlapping windows.
      max_chars: use only the first ``max_chars`` characters (for quick runs);
        None uses the whole corpus.

    Returns:
      ``(splits, vocab)``: ``splits.train`` and ``splits.val`` hold ``x, y: [N, seq_len]
      int32`` ids, ``splits.test`` is None; ``vocab`` is the sorted distinct characters
      of the text used, and id ``i`` means ``vocab[i]`` (see :func:`decode`).

    Raises:
      DataError: bad arguments, or a train or val part too short for one window.
    """
    for name, value in (("seq_len", seq_len), ("stride", stride), ("max_chars", max_chars)):
        if value is None and name != "seq_len":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"load_char_lm: {name} must be an int >= 1 (or None where allowed), got {value!r}")
    stride = seq_len if stride is None else int(stride)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise DataError(f"load_char_lm: val_fraction must be in [0, 1), got {val_fraction!r}")

    text = corpus_text()
    if max_chars is not None:
        text = text[:max_chars]
    vocab = "".join(sorted(set(text)))
    # Code points -> ids in one vectorised pass (vocab is sorted, so searchsorted is exact).
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab_codes = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(vocab_codes, codes).astype(np.int32)

    cut = int(round((1.0 - val_fraction) * len(text)))
    window = seq_len + 1
    parts = {"train": ids[:cut], "val": ids[cut:] if val_fraction > 0 else None}
    for name, part in parts.items():
        if part is not None and len(part) < window:
            raise DataError(
                f"load_char_lm: the {name} part has {len(part)} characters "
                f"(val_fraction={val_fraction}, {len(text)} characters in all) but one window needs "
                f"seq_len + 1 = {window}; lower seq_len, raise max_chars"
                + (", or change val_fraction" if val_fraction > 0 else "")
            )
    train = _windows(parts["train"], seq_len, stride)
    val = None if parts["val"] is None else _windows(parts["val"], seq_len, stride)
    return Splits(train=train, val=val, test=None), vocab


def decode(ids, vocab: str) -> str:
    """The string that a 1-D sequence of ids spells: ``"".join(vocab[i] for i in ids)``.

    Args:
      ids: ``[L]`` integer ids into ``vocab`` (a list, numpy or JAX array).
      vocab: the vocabulary string returned by :func:`load_char_lm`.

    Raises:
      DataError: ``ids`` is not 1-D, or holds an id outside ``[0, len(vocab))``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise DataError(
            f"decode: expected a 1-D sequence of ids, got shape {ids.shape}; decode one row, e.g. decode(x[0], vocab)"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= len(vocab)):
        raise DataError(f"decode: ids must lie in [0, {len(vocab)}), got range [{ids.min()}, {ids.max()}]")
    return "".join(vocab[int(i)] for i in ids)


def unigram_baseline(splits: Splits, *, vocab_size: Optional[int] = None) -> float:
    """Val cross-entropy (nats/char) of the train unigram distribution: the bar a model must clear.

    ``p(c) = (count_train(c) + 1) / (n_train + V)`` (add-one smoothing, so a character
    unseen in training still has a finite cost), where counts run over the train targets
    ``splits.train.y``; the result is ``mean(-log p(c))`` over every val target
    ``splits.val.y``, the same positions a model's mean val loss averages over. A model
    that ignores context can do no better than about this.

    Args:
      splits: from :func:`load_char_lm`; ``val`` must not be None.
      vocab_size: V; None means ``len(vocab)`` as far as the splits show it (largest id + 1).
        Pass ``len(vocab)`` to match a model's output size exactly.

    Raises:
      DataError: ``splits.val`` is None, or an id is not below ``vocab_size``.
    """
    if splits.val is None:
        raise DataError("unigram_baseline: splits.val is None; load with val_fraction > 0")
    train_y = np.asarray(splits.train.y).ravel()
    val_y = np.asarray(splits.val.y).ravel()
    largest = int(max(train_y.max(), val_y.max()))
    v = largest + 1 if vocab_size is None else int(vocab_size)
    if largest >= v:
        raise DataError(f"unigram_baseline: id {largest} is not below vocab_size={v}; pass len(vocab)")
    counts = np.bincount(train_y, minlength=v).astype(np.float64)
    log_p = np.log(counts + 1.0) - np.log(train_y.size + v)
    return float(-np.mean(log_p[val_y]))
