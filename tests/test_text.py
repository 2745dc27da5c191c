"""Tests for fntrain.data.text: the pydoc_data character-level LM dataset."""

import collections
import math

import numpy as np
import pytest

from fntrain.data import DataError, Splits, decode, load_char_lm, unigram_baseline
from fntrain.data.text import corpus_text


def _spelled(a):
    """The text a stride == seq_len split covers: each window's inputs, then the last target."""
    return np.concatenate([a.x.ravel(), a.y[-1, -1:]])


def test_corpus_is_sorted_topics():
    from pydoc_data.topics import topics

    text = corpus_text()
    assert text == "".join(topics[k] for k in sorted(topics))
    assert len(text) > 100_000


def test_shapes_dtypes_and_vocab():
    splits, vocab = load_char_lm(seq_len=64)
    assert isinstance(splits, Splits) and splits.test is None
    for a in (splits.train, splits.val):
        assert a.x.shape == a.y.shape and a.x.shape[1] == 64 and a.x.shape[0] > 0
        assert a.x.dtype == np.int32 and a.y.dtype == np.int32
        assert a.x.min() >= 0 and a.x.max() < len(vocab)
    assert vocab == "".join(sorted(set(corpus_text())))
    n = len(corpus_text())
    cut = round(0.9 * n)
    # non-overlapping windows of 65 chars, stride 64, cut from each part separately
    assert splits.train.x.shape[0] == (cut - 65) // 64 + 1
    assert splits.val.x.shape[0] == (n - cut - 65) // 64 + 1


def test_y_is_x_shifted_by_one():
    splits, _ = load_char_lm(seq_len=32)
    for a in (splits.train, splits.val):
        np.testing.assert_array_equal(a.y[:, :-1], a.x[:, 1:])
        # stride == seq_len: the next window starts on this window's last target
        np.testing.assert_array_equal(a.x[1:, 0], a.y[:-1, -1])


def test_train_and_val_are_disjoint_contiguous_regions_in_order():
    splits, vocab = load_char_lm(seq_len=50, val_fraction=0.2)
    text = corpus_text()
    cut = round(0.8 * len(text))
    train_text = decode(_spelled(splits.train), vocab)
    val_text = decode(_spelled(splits.val), vocab)
    # train is a prefix of the text that ends before the cut ...
    assert text.startswith(train_text) and len(train_text) <= cut
    # ... and val starts exactly at the cut, so no character is in both.
    assert text[cut : cut + len(val_text)] == val_text
    assert text.find(val_text) >= len(train_text)
    # decoding one window gives the matching 51-character slice of the text
    i = 7
    assert decode(splits.val.x[i], vocab) + vocab[splits.val.y[i, -1]] == text[cut + 50 * i : cut + 50 * i + 51]


def test_deterministic():
    a, va = load_char_lm(seq_len=40, stride=13, max_chars=20_000)
    b, vb = load_char_lm(seq_len=40, stride=13, max_chars=20_000)
    assert va == vb
    for s, t in zip((a.train, a.val), (b.train, b.val)):
        np.testing.assert_array_equal(s.x, t.x)
        np.testing.assert_array_equal(s.y, t.y)


@pytest.mark.parametrize("stride", [1, 5, 16, 23])
def test_stride(stride):
    seq_len, max_chars = 16, 3000
    splits, vocab = load_char_lm(seq_len=seq_len, stride=stride, max_chars=max_chars)
    text = corpus_text()[:max_chars]
    cut = round(0.9 * max_chars)
    for a, start, end in ((splits.train, 0, cut), (splits.val, cut, max_chars)):
        assert a.x.shape[0] == (end - start - seq_len - 1) // stride + 1
        for i in (0, 1, a.x.shape[0] - 1):
            s = start + i * stride
            assert decode(a.x[i], vocab) == text[s : s + seq_len]
            assert decode(a.y[i], vocab) == text[s + 1 : s + seq_len + 1]
        # the last window stays inside its part (no leak from train into val)
        assert start + (a.x.shape[0] - 1) * stride + seq_len + 1 <= end


def test_max_chars_and_vocab_of_used_text():
    splits, vocab = load_char_lm(seq_len=10, max_chars=1000)
    text = corpus_text()[:1000]
    assert vocab == "".join(sorted(set(text)))
    assert splits.train.x.shape == ((900 - 11) // 10 + 1, 10)
    assert splits.val.x.shape == ((100 - 11) // 10 + 1, 10)
    assert decode(_spelled(splits.val), vocab) == text[900 : 900 + 9 * 10 + 1]


def test_val_fraction_zero_gives_no_val():
    splits, _ = load_char_lm(seq_len=10, val_fraction=0.0, max_chars=500)
    assert splits.val is None and splits.test is None
    assert splits.train.x.shape == ((500 - 11) // 10 + 1, 10)


def test_unigram_baseline_matches_hand_computation():
    splits, vocab = load_char_lm(seq_len=16, max_chars=5000)
    train = [int(c) for c in splits.train.y.ravel()]
    val = [int(c) for c in splits.val.y.ravel()]
    counts = collections.Counter(train)
    v = len(vocab)
    expected = sum(-math.log((counts[c] + 1) / (len(train) + v)) for c in val) / len(val)
    # float64 sums of ~500 logs: agreement to ~1e-13, 1e-12 leaves room
    assert unigram_baseline(splits, vocab_size=v) == pytest.approx(expected, rel=1e-12)
    # without vocab_size, V is the largest id seen + 1
    v_seen = max(max(train), max(val)) + 1
    expected_seen = sum(-math.log((counts[c] + 1) / (len(train) + v_seen)) for c in val) / len(val)
    assert unigram_baseline(splits) == pytest.approx(expected_seen, rel=1e-12)


def test_unigram_baseline_is_a_real_bar():
    splits, vocab = load_char_lm()
    b = unigram_baseline(splits, vocab_size=len(vocab))
    # better than uniform over the vocabulary, far from free
    assert 2.0 < b < math.log(len(vocab))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": -3}, "seq_len"),
        ({"seq_len": 2.5}, "seq_len"),
        ({"stride": 0}, "stride"),
        ({"max_chars": 0}, "max_chars"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"seq_len": 200, "max_chars": 1000}, "val part has 100 characters"),
        ({"seq_len": 10, "max_chars": 100, "val_fraction": 0.95}, "train part has 5 characters"),
    ],
)
def test_bad_arguments_raise_data_error(kwargs, match):
    with pytest.raises(DataError, match=match):
        load_char_lm(**kwargs)


def test_decode_and_baseline_errors():
    _, vocab = load_char_lm(seq_len=4, max_chars=100)
    assert decode([0, 1], vocab) == vocab[0] + vocab[1]
    with pytest.raises(DataError, match="1-D"):
        decode(np.zeros((2, 3), np.int32), vocab)
    with pytest.raises(DataError, match="ids must lie"):
        decode([len(vocab)], vocab)
    no_val, _ = load_char_lm(seq_len=4, max_chars=100, val_fraction=0.0)
    with pytest.raises(DataError, match="val_fraction > 0"):
        unigram_baseline(no_val)
