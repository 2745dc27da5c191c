"""Tests for fntrain.data: loaders, splits and the resumable iterator."""

import gzip
import json
import struct

import jax
import numpy as np
import pytest

from fntrain.data import (
    Arrays,
    BatchIterator,
    DataError,
    IteratorState,
    Splits,
    eval_batches,
    load_csv,
    load_digits,
    load_idx,
    load_npz,
    make_classification,
    make_regression,
    read_idx,
    split_arrays,
    standardize,
)


def _toy(n=10, f=3):
    x = np.arange(n * f, dtype=np.float32).reshape(n, f)
    return Arrays(x=x, y=np.arange(n, dtype=np.int32))


# --- Arrays ------------------------------------------------------------------


def test_arrays_num_examples_and_replace():
    a = _toy(7)
    assert a.num_examples == 7
    b = a._replace(y=a.y + 1)
    assert isinstance(b, Arrays) and b.y[0] == 1 and b.num_examples == 7
    x, y = a
    assert x.shape == (7, 3) and y.shape == (7,)


# --- npz -----------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0], np.int32)
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y, inputs=x * 2)
    a = load_npz(p)
    np.testing.assert_array_equal(a.x, x)
    np.testing.assert_array_equal(a.y, y)
    assert a.x.dtype == np.float32 and a.y.dtype == np.int32
    b = load_npz(str(p), x_key="inputs")
    np.testing.assert_array_equal(b.x, x * 2)


def test_npz_errors(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, a=np.zeros(3), y=np.zeros(3))
    with pytest.raises(DataError, match=r"missing key.*'x'.*keys present: \['a', 'y'\]") as e:
        load_npz(p)
    assert str(p) in str(e.value)
    with pytest.raises(DataError, match="not found"):
        load_npz(tmp_path / "nope.npz")
    q = tmp_path / "bad.npz"
    np.savez(q, x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match="4 examples but y has 3") as e:
        load_npz(q)
    assert str(q) in str(e.value)
    r = tmp_path / "obj.npz"
    np.savez(r, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="pickle"):
        load_npz(r)


# --- IDX -----------------------------------------------------------------------


def _idx_bytes(arr, code):
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 4, 5), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([3, 1, 4, 1, 5, 9], np.uint8)
    write = gzip.compress if gz else (lambda b: b)
    # Deliberately no ".gz" suffix: gzip must be detected from magic bytes.
    ip, lp = tmp_path / "images.idx", tmp_path / "labels.idx"
    ip.write_bytes(write(_idx_bytes(images, 0x08)))
    lp.write_bytes(write(_idx_bytes(labels, 0x08)))

    raw = read_idx(ip)
    assert raw.dtype == np.uint8 and raw.shape == (6, 4, 5)
    np.testing.assert_array_equal(raw, images)

    a = load_idx(ip, lp)
    assert a.x.shape == (6, 4, 5, 1) and a.x.dtype == np.float32
    assert a.y.shape == (6,) and a.y.dtype == np.int32
    assert a.x[0, 0, 0, 0] == 0.0 and a.x[0, 0, 1, 0] == 1.0
    np.testing.assert_allclose(a.x[..., 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(a.y, [3, 1, 4, 1, 5, 9])


def test_idx_big_endian_dtypes(tmp_path):
    p = tmp_path / "f.idx"
    vals = np.array([[1.5, -2.0], [3.25, 1e6]], dtype=">f4")
    p.write_bytes(_idx_bytes(vals, 0x0D))
    out = read_idx(p)
    np.testing.assert_array_equal(out, [[1.5, -2.0], [3.25, 1e6]])
    assert out.dtype == np.float32 and out.dtype.isnative
    q = tmp_path / "i.idx"
    q.write_bytes(_idx_bytes(np.array([-7, 70000], dtype=">i4"), 0x0C))
    np.testing.assert_array_equal(read_idx(q), [-7, 70000])
    r = tmp_path / "s.idx"
    r.write_bytes(_idx_bytes(np.array([-300, 5], dtype=">i2"), 0x0B))
    np.testing.assert_array_equal(read_idx(r), [-300, 5])


def test_idx_errors(tmp_path):
    good = _idx_bytes(np.zeros((3, 2, 2), np.uint8), 0x08)
    t = tmp_path / "trunc.idx"
    t.write_bytes(good[:-1])
    with pytest.raises(DataError, match="truncated IDX data") as e:
        read_idx(t)
    assert str(t) in str(e.value)
    tg = tmp_path / "trunc_gz"
    tg.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tg)
    b = tmp_path / "bad.idx"
    b.write_bytes(b"\x01\x02\x08\x01" + good[4:])
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(b)
    c = tmp_path / "code.idx"
    c.write_bytes(b"\x00\x00\x07\x03" + good[4:])
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(c)
    h = tmp_path / "hdr.idx"
    h.write_bytes(good[:9])
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(h)
    lab = tmp_path / "labels.idx"
    lab.write_bytes(_idx_bytes(np.zeros(4, np.uint8), 0x08))
    ok = tmp_path / "ok.idx"
    ok.write_bytes(good)
    with pytest.raises(DataError, match="3 images but .* 4 labels"):
        load_idx(ok, lab)


# --- CSV -----------------------------------------------------------------------


def test_csv_no_header_int_target(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("1.0,2.0,0\n3.5,-4,1\n\n5,6,2\n")
    a = load_csv(p)
    assert a.x.dtype == np.float32 and a.y.dtype == np.int32
    np.testing.assert_array_equal(a.x, [[1, 2], [3.5, -4], [5, 6]])
    np.testing.assert_array_equal(a.y, [0, 1, 2])
    b = load_csv(p, target_column=0, target_dtype="float")
    assert b.y.shape == (3, 1) and b.y.dtype == np.float32
    np.testing.assert_array_equal(b.y[:, 0], [1.0, 3.5, 5.0])
    np.testing.assert_array_equal(b.x, [[2, 0], [-4, 1], [6, 2]])


def test_csv_header_by_name_and_index(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("label;f1;price\n1;0.5;10.25\n0;1.5;-3\n")
    a = load_csv(p, target_column="price", delimiter=";", target_dtype="float")
    np.testing.assert_array_equal(a.x, [[1, 0.5], [0, 1.5]])
    np.testing.assert_allclose(a.y, [[10.25], [-3.0]])
    b = load_csv(p, target_column=0, delimiter=";")
    np.testing.assert_array_equal(b.y, [1, 0])
    np.testing.assert_array_equal(b.x, [[0.5, 10.25], [1.5, -3]])
    # header=False forces the first row to be data -> its text is a bad cell.
    with pytest.raises(DataError, match="line 1, column 1"):
        load_csv(p, delimiter=";", header=False)


def test_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,y\n1,2,0\n3,oops,1\n")
    with pytest.raises(DataError) as e:
        load_csv(p)
    msg = str(e.value)
    assert str(p) in msg and "line 3" in msg and "column 2 ('b')" in msg and "'oops'" in msg
    q = tmp_path / "noheader.csv"
    q.write_text("1,2,0\n")
    with pytest.raises(DataError, match="no header row"):
        load_csv(q, target_column="y")
    with pytest.raises(DataError, match="no column named 'z'"):
        load_csv(_write(tmp_path, "named.csv", "a,y\n1,0\n"), target_column="z")
    with pytest.raises(DataError, match="line 2 has 2 fields; expected 3"):
        load_csv(_write(tmp_path, "ragged.csv", "1,2,0\n1,2\n"))
    with pytest.raises(DataError, match="not an integer"):
        load_csv(_write(tmp_path, "frac.csv", "1,2,0.5\n"))
    with pytest.raises(DataError, match="target_dtype"):
        load_csv(q, target_dtype="str")
    with pytest.raises(DataError, match="not found"):
        load_csv(tmp_path / "missing.csv")


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# --- embedded / synthetic -----------------------------------------------------


def test_digits():
    a = load_digits()
    assert a.x.shape == (1797, 8, 8, 1) and a.x.dtype == np.float32
    assert a.y.shape == (1797,) and a.y.dtype == np.int32
    assert a.x.min() == 0.0 and a.x.max() == 1.0
    assert set(np.unique(a.y)) == set(range(10))


def test_make_classification():
    a = make_classification(300, 5, 4, seed=1)
    b = make_classification(300, 5, 4, seed=1)
    c = make_classification(300, 5, 4, seed=2)
    assert a.x.shape == (300, 5) and a.x.dtype == np.float32
    assert a.y.shape == (300,) and a.y.dtype == np.int32
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.allclose(a.x, c.x)
    np.testing.assert_array_equal(np.bincount(a.y), [75, 75, 75, 75])
    # Well separated: nearest class mean classifies most points correctly.
    easy = make_classification(600, 10, 3, seed=0, class_sep=6.0)
    means = np.stack([easy.x[easy.y == k].mean(0) for k in range(3)])
    pred = np.argmin(((easy.x[:, None] - means) ** 2).sum(-1), axis=1)
    assert (pred == easy.y).mean() > 0.9


def test_make_regression():
    a = make_regression(200, 6, 2, seed=3)
    b = make_regression(200, 6, 2, seed=3)
    c = make_regression(200, 6, 2, seed=4)
    assert a.x.shape == (200, 6) and a.y.shape == (200, 2)
    assert a.x.dtype == np.float32 and a.y.dtype == np.float32
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.allclose(a.y, c.y)
    assert make_regression(10).y.shape == (10, 1)
    # Nearly linear: least squares leaves small residuals (noise + mild sin term).
    xb = np.concatenate([a.x, np.ones((200, 1), np.float32)], 1)
    coef, *_ = np.linalg.lstsq(xb, a.y, rcond=None)
    assert np.std(a.y - xb @ coef) < 0.2


# --- splits --------------------------------------------------------------------


def test_split_sizes_and_disjoint():
    data = _toy(100)
    s = split_arrays(data, val_fraction=0.2, test_fraction=0.1, key=jax.random.key(0))
    assert isinstance(s, Splits)
    assert (s.train.num_examples, s.val.num_examples, s.test.num_examples) == (70, 20, 10)
    ids = np.concatenate([s.train.y, s.val.y, s.test.y])
    np.testing.assert_array_equal(np.sort(ids), np.arange(100))
    # x rows travel with their y.
    np.testing.assert_array_equal(s.val.x, data.x[s.val.y])
    # Documented order: test, then val, then train from one permutation.
    perm = np.asarray(jax.random.permutation(jax.random.key(0), 100))
    np.testing.assert_array_equal(s.test.y, perm[:10])
    np.testing.assert_array_equal(s.val.y, perm[10:30])
    np.testing.assert_array_equal(s.train.y, perm[30:])
    again = split_arrays(data, val_fraction=0.2, test_fraction=0.1, key=jax.random.key(0))
    np.testing.assert_array_equal(again.train.y, s.train.y)
    other = split_arrays(data, val_fraction=0.2, test_fraction=0.1, key=jax.random.key(1))
    assert not np.array_equal(other.train.y, s.train.y)


def test_split_zero_fractions_and_validation():
    data = _toy(10)
    s = split_arrays(data, val_fraction=0.0, test_fraction=0.3, key=jax.random.key(0))
    assert s.val is None and s.test.num_examples == 3 and s.train.num_examples == 7
    s = split_arrays(data, val_fraction=0.0, test_fraction=0.0, key=jax.random.key(0))
    assert s.val is None and s.test is None and s.train.num_examples == 10
    for v, t in [(-0.1, 0.0), (1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.7, 0.4)]:
        with pytest.raises(DataError):
            split_arrays(data, val_fraction=v, test_fraction=t, key=jax.random.key(0))
    with pytest.raises(DataError, match="rounds to 0"):
        split_arrays(data, val_fraction=0.01, test_fraction=0.0, key=jax.random.key(0))


def test_standardize_uses_train_stats():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 4)) * [1.0, 10.0, 0.1, 0.0] + [5.0, -3.0, 0.0, 7.0])
    data = Arrays(x=x.astype(np.float32), y=np.arange(200, dtype=np.int32))
    s = split_arrays(data, val_fraction=0.25, test_fraction=0.25, key=jax.random.key(0))
    out, (mean, std) = standardize(s)
    assert mean.shape == (4,) and std.shape == (4,)
    tx = out.train.x
    assert tx.dtype == np.float32
    np.testing.assert_allclose(tx[:, :3].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(tx[:, :3].std(0), 1.0, atol=1e-5)
    # Constant feature: centred but not scaled, so it is 0 in train and stays finite elsewhere.
    assert std[3] == 1.0 and np.all(out.train.x[:, 3] == 0.0)
    # val uses train statistics, not its own.
    expected_val = (s.val.x.astype(np.float64) - s.train.x.mean(0, dtype=np.float64)) / std
    np.testing.assert_allclose(out.val.x, expected_val, rtol=1e-4, atol=1e-4)
    assert abs(out.val.x[:, 0].mean()) > 1e-3  # would be ~0 only with val's own stats
    np.testing.assert_array_equal(out.val.y, s.val.y)
    none_splits = Splits(train=s.train, val=None, test=None)
    out2, _ = standardize(none_splits)
    assert out2.val is None and out2.test is None


# --- iterator ------------------------------------------------------------------


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_iterator_each_example_once_per_epoch():
    data = _toy(10)
    it = BatchIterator(data, 3, key=jax.random.key(0))
    assert it.steps_per_epoch == 4
    orders = []
    for _ in range(3):
        batches = _take(it, 4)
        assert [len(y) for _, y in batches] == [3, 3, 3, 1]
        ys = np.concatenate([y for _, y in batches])
        np.testing.assert_array_equal(np.sort(ys), np.arange(10))
        for x, y in batches:
            np.testing.assert_array_equal(x, data.x[y])
        orders.append(ys)
    assert it.state == IteratorState(3, 0)
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    # Epoch e's order is the documented fold_in permutation.
    perm1 = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(0), 1), 10))
    np.testing.assert_array_equal(orders[1], perm1)
    same = BatchIterator(data, 3, key=jax.random.key(0))
    _assert_same_batches(_take(same, 4), _take(BatchIterator(data, 3, key=jax.random.key(0)), 4))
    other = np.concatenate([y for _, y in _take(BatchIterator(data, 3, key=jax.random.key(1)), 4)])
    assert not np.array_equal(other, orders[0])


def test_iterator_drop_last_and_no_shuffle():
    data = _toy(10)
    it = BatchIterator(data, 3, key=jax.random.key(0), drop_last=True)
    assert it.steps_per_epoch == 3
    ep = list(it.epoch())
    assert [len(y) for _, y in ep] == [3, 3, 3]
    assert len(np.unique(np.concatenate([y for _, y in ep]))) == 9
    assert it.state == IteratorState(1, 0)
    seq = BatchIterator(data, 4, key=jax.random.key(0), shuffle=False)
    ys = [y.tolist() for _, y in _take(seq, 4)]
    assert ys == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]
    assert BatchIterator(data, 10, key=jax.random.key(0), drop_last=True).steps_per_epoch == 1
    with pytest.raises(DataError, match="batch_size"):
        BatchIterator(data, 0, key=jax.random.key(0))
    with pytest.raises(DataError, match="drop_last"):
        BatchIterator(data, 11, key=jax.random.key(0), drop_last=True)
    assert BatchIterator(data, 11, key=jax.random.key(0)).steps_per_epoch == 1


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("stop", [0, 2, 4, 5, 8])  # 4 and 8 are epoch boundaries
def test_iterator_resume_matches_uninterrupted(drop_last, stop):
    data = _toy(17)
    key = jax.random.key(42)
    bs = 4
    steps = BatchIterator(data, bs, key=key, drop_last=drop_last).steps_per_epoch
    assert steps == (4 if drop_last else 5)
    reference = _take(BatchIterator(data, bs, key=key, drop_last=drop_last), 3 * steps)
    first = BatchIterator(data, bs, key=key, drop_last=drop_last)
    head = _take(first, stop)
    # Round trip through JSON, as a checkpoint would.
    state = IteratorState.from_dict(json.loads(json.dumps(first.state.to_dict())))
    assert state == first.state
    assert state.epoch == stop // steps and state.offset == (stop % steps) * bs
    resumed = BatchIterator(data, bs, key=key, drop_last=drop_last, state=state)
    _assert_same_batches(head + _take(resumed, 3 * steps - stop), reference)


def test_iterator_state_types_and_end_of_epoch_normalization():
    data = _toy(10)
    it = BatchIterator(data, 5, key=jax.random.key(0))
    next(it)
    st = it.state
    assert st == (0, 5) and type(st.epoch) is int and type(st.offset) is int
    next(it)
    assert it.state == (1, 0)
    # A state pointing at the end of an epoch is the start of the next one.
    assert BatchIterator(data, 5, key=jax.random.key(0), state=IteratorState(2, 10)).state == (3, 0)
    with pytest.raises(DataError, match="outside the data"):
        BatchIterator(data, 5, key=jax.random.key(0), state=IteratorState(0, 11))
    with pytest.raises(DataError):
        IteratorState.from_dict({"epoch": 1})


def test_epoch_generator_semantics():
    data = _toy(10)
    key = jax.random.key(7)
    ref = _take(BatchIterator(data, 3, key=key), 8)
    it = BatchIterator(data, 3, key=key)
    first = next(it)
    rest = list(it.epoch())  # only the 3 remaining batches of epoch 0
    assert len(rest) == 3 and it.state == (1, 0)
    full = list(it.epoch())
    assert len(full) == 4 and it.state == (2, 0)
    _assert_same_batches([first] + rest + full, ref)


def test_eval_batches():
    data = _toy(10)
    batches = list(eval_batches(data, 4))
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(batches[2][0], data.x[8:])
    assert len(list(eval_batches(data, 100))) == 1
    with pytest.raises(DataError):
        list(eval_batches(data, 0))


# --- own splits, per-process batches, damaged files ----------------------------


def test_complete_splits_draws_only_the_missing_ones():
    from fntrain.data import complete_splits

    train, test = _toy(50), _toy(7)
    key = jax.random.key(0)
    s = complete_splits({"train": train, "test": test}, val_fraction=0.2, test_fraction=0.5, key=key)
    assert s.test is test and (s.val.num_examples, s.train.num_examples) == (10, 40)
    # With train alone it is split_arrays.
    alone = complete_splits({"train": train}, val_fraction=0.2, test_fraction=0.1, key=key)
    reference = split_arrays(train, val_fraction=0.2, test_fraction=0.1, key=key)
    for a, b in zip(alone, reference):
        np.testing.assert_array_equal(a.y, b.y)
    with pytest.raises(DataError, match="shape"):
        complete_splits({"train": train, "val": _toy(5, f=4)}, val_fraction=0.1, test_fraction=0.1, key=key)
    with pytest.raises(DataError, match="train, val and test"):
        complete_splits({"train": train, "tset": test}, val_fraction=0.1, test_fraction=0.1, key=key)


@pytest.mark.parametrize("pad_to", [None, 16])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_gather_batch_reads_exactly_the_process_rows_of_the_padded_batch(pad_to, count):
    from fntrain.data import gather_batch, pad_batch
    from fntrain.parallel import process_rows

    data = _toy(40)
    for rows in (np.arange(16) + 3, np.array([39, 0, 5, 6, 7, 8, 1, 2])):  # a full batch, a partial one
        if pad_to is None and len(rows) % count:
            continue
        whole = (data.x[rows], data.y[rows])
        whole = pad_batch(whole, pad_to) if pad_to else whole
        for index in range(count):
            expected = process_rows(whole, process_index=index, process_count=count)
            got = gather_batch(data, rows, pad_to=pad_to, process_index=index, process_count=count)
            for e, g in zip(expected, got):
                np.testing.assert_array_equal(g, e)


def test_gzip_is_inflated_no_further_than_the_idx_header_declares(tmp_path, monkeypatch):
    import zlib

    from fntrain.data import idx

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 20)
    bomb = packer.compress(header) + b"".join(packer.compress(bytes(1 << 20)) for _ in range(64)) + packer.flush()
    (tmp_path / "bomb.gz").write_bytes(bomb)
    inflated = []
    decompress = idx._Stream._decompress

    def counted(self, data, limit):
        out = decompress(self, data, limit)
        inflated.append(len(out))
        return out

    monkeypatch.setattr(idx._Stream, "_decompress", counted)
    with pytest.raises(DataError, match="more than the 20 bytes its IDX header declares"):
        read_idx(tmp_path / "bomb.gz")
    assert sum(inflated) <= 8 + 21  # the header, then the declared 20 bytes and one more: of 64 MiB


def test_file_loaders_refuse_damaged_and_mistaken_files(tmp_path):
    p = tmp_path / "d.npz"
    np.save(open(p, "wb"), np.zeros(3))
    with pytest.raises(DataError, match="a .npy file"):
        load_npz(p)
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        load_npz(p)
    np.savez(p, x=np.zeros((4, 2)), y=np.zeros(4))
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated or damaged"):
        load_npz(p)
    c = tmp_path / "t.csv"
    c.write_bytes("a,b\n1,2\n".encode() + "3,é\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"line 3: byte 0xe9 is not UTF-8"):
        load_csv(c)
    c.write_text("\ufeffa;y\n1;0\n2;1\n", encoding="utf-8")  # a BOM, as Excel writes
    assert load_csv(c, target_column="y", delimiter=";").x.tolist() == [[1.0], [2.0]]
    with pytest.raises(DataError, match="single character"):
        load_csv(c, delimiter=";;")


def test_npz_split_arrays():
    import tempfile

    from fntrain.data import npz_parts

    d = tempfile.mkdtemp()
    np.savez(f"{d}/a.npz", x=np.ones((5, 2)), y=np.zeros(5), x_test=np.ones((3, 2)), y_test=np.zeros(3))
    parts = npz_parts(f"{d}/a.npz")
    assert list(parts) == ["train", "test"] and parts["test"].arrays.num_examples == 3
    assert parts["test"].x_name.endswith("array 'x_test'")
    np.savez(f"{d}/b.npz", x=np.ones((5, 2)), y=np.zeros(5), x_val=np.ones((3, 2)))
    with pytest.raises(DataError, match="has 'x_val' but no 'y_val'"):
        npz_parts(f"{d}/b.npz")
    np.savez(f"{d}/c.npz", x=np.ones((5, 2)), y=np.zeros(5), x_train=np.ones((5, 2)), y_train=np.zeros(5))
    with pytest.raises(DataError, match="holds both 'x' and 'x_train'"):
        npz_parts(f"{d}/c.npz")
