"""Datasets with their own split: the files' val/test rows are used as they are.

For npz (split arrays), IDX (a file pair per split) and CSV (a file per split): the test
split is exactly the file's test rows, in order; only the missing val split is drawn from
train; ``fntrain.data.load_splits`` gives exactly the rows a run trains on; and
``fntrain eval`` reports the test metrics of exactly those rows (against NumPy).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import fntrain as ft
from fntrain import cli
from fntrain.data import Arrays

N_TRAIN, N_TEST, F, CLASSES = 60, 25, 4, 3


def _rows(n: int, start: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """x [n, F] whose column 0 is a row id (start..start+n-1), y [n] in 0..CLASSES-1."""
    x = rng.normal(size=(n, F)).astype(np.float32)
    x[:, 0] = np.arange(start, start + n)
    return x, (np.arange(n) % CLASSES).astype(np.int32)


def _files(d: Path, kind: str) -> tuple[dict, Arrays]:
    """Writes a train and a test split in ``kind``'s format; returns (data section, test rows)."""
    rng = np.random.default_rng(0)
    (xtr, ytr), (xte, yte) = _rows(N_TRAIN, 0, rng), _rows(N_TEST, 1000, rng)
    if kind == "npz":
        np.savez(d / "d.npz", x=xtr, y=ytr, x_test=xte, y_test=yte)  # MNIST-1D's layout
        return {"name": "npz", "path": str(d / "d.npz")}, Arrays(xte, yte)
    if kind == "idx":
        # uint8 images [n, 2, 2]: row ids fit in a byte, the loader scales them by 1/255.
        xtr8, xte8 = ((np.arange(n * 4).reshape(n, 2, 2) % 251).astype(np.uint8) for n in (N_TRAIN, N_TEST))
        xte8[:, 0, 0] = 4 * np.arange(N_TEST) + 1  # row ids: train's are multiples of 4
        for name, a in (("train-images", xtr8), ("train-labels", ytr.astype(np.uint8)),
                        ("t10k-images", xte8), ("t10k-labels", yte.astype(np.uint8))):
            header = struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
            (d / f"{name}.gz").write_bytes(gzip.compress(header + a.tobytes()))
        section = {"name": "idx", "images_path": str(d / "train-images.gz"), "labels_path": str(d / "train-labels.gz"),
                   "test_images_path": str(d / "t10k-images.gz"), "test_labels_path": str(d / "t10k-labels.gz")}
        return section, Arrays((xte8.astype(np.float32) / 255.0)[..., None], yte)
    for name, (x, y) in (("train", (xtr, ytr)), ("test", (xte, yte))):
        lines = ["a,b,c,d,label"] + [",".join(f"{v:.6f}" for v in row) + f",{label}" for row, label in zip(x, y)]
        (d / f"{name}.csv").write_text("\n".join(lines) + "\n")
    xte_read = np.array([[float(f"{v:.6f}") for v in row] for row in xte], np.float32)
    return {"name": "csv", "path": str(d / "train.csv"), "test_path": str(d / "test.csv")}, Arrays(xte_read, yte)


def _config(d: Path, data: dict) -> Path:
    raw = {
        "seed": 3,
        "output_dir": str(d / "run"),
        "data": {**data, "val_fraction": 0.2, "test_fraction": 0.3, "batch_size": 16},
        "model": {"name": "mlp", "hidden_sizes": [8]},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "loop": {"kind": "steps", "num_steps": 6},
        "log": {"every_steps": 3, "progress": "none"},
    }
    path = d / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _ids(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x).reshape(len(x), -1)
    return flat[:, 0]


@pytest.mark.parametrize("kind", ["npz", "idx", "csv"])
def test_test_split_is_the_files_test_rows_and_val_comes_from_train(tmp_path, kind):
    data, test = _files(tmp_path, kind)
    splits = ft.data.load_splits(_config(tmp_path, data))
    # The file's test rows, all of them, in order, unchanged (test_fraction 0.3 is not applied).
    np.testing.assert_array_equal(splits.test.x, test.x)
    np.testing.assert_array_equal(splits.test.y, test.y)
    # val is drawn from train only: round(0.2 * 60) = 12 rows, disjoint from train, together all 60.
    assert (splits.train.num_examples, splits.val.num_examples) == (48, 12)
    everything = np.concatenate([_ids(splits.train.x), _ids(splits.val.x)])
    assert len(np.unique(everything)) == N_TRAIN and not np.isin(_ids(splits.test.x), everything).any()


def test_load_splits_gives_the_rows_a_run_trains_on(tmp_path):
    data, _ = _files(tmp_path, "npz")
    config = ft.load_config(_config(tmp_path, data))

    class Record:
        def on_train_start(self, info):
            self.splits = info.splits

    record = Record()
    ft.train(config, stream=io.StringIO(), callbacks=[record])
    mine = ft.data.load_splits(config)
    for ours, run in zip(mine, record.splits):
        np.testing.assert_array_equal(ours.x, run.x)
        np.testing.assert_array_equal(ours.y, run.y)
    # A plain split_arrays with key(seed) is another split: the run's key comes from seed_keys.
    other = ft.data.split_arrays(ft.data.load_npz(data["path"]), val_fraction=0.2, test_fraction=0.0,
                                 key=__import__("jax").random.key(3))
    assert not np.array_equal(_ids(other.val.x), _ids(mine.val.x))
    assert not np.array_equal(_ids(ft.data.load_splits(config, seed=4).val.x), _ids(mine.val.x))


def _numpy_metrics(params: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean softmax cross-entropy and accuracy of the trained mlp (dense, relu, dense), in float64."""
    h = x.reshape(len(x), -1).astype(np.float64) @ params["params/dense_1/w"] + params["params/dense_1/b"]
    logits = np.maximum(h, 0) @ params["params/dense_3/w"] + params["params/dense_3/b"]
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(len(y)), y])), float(np.mean(logits.argmax(axis=1) == y))


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("kind", ["npz", "idx", "csv"])
def test_eval_reports_the_test_metrics_of_exactly_the_files_test_rows(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(sys, "path", list(sys.path))
    data, test = _files(tmp_path, kind)
    config = _config(tmp_path, data)
    rc, out, err = _main(["train", str(config)])
    assert rc == 0, err
    assert f"/ {N_TEST} test examples" in out
    rc, out, err = _main(["eval", str(config)])
    assert rc == 0, err
    reported = json.loads(out)["test"]
    with np.load(tmp_path / "run" / "params.npz", allow_pickle=False) as f:
        params = {k: f[k] for k in f.files}
    loss, accuracy = _numpy_metrics(params, test.x, test.y)
    # float32 forward pass against float64 NumPy over 25 rows: 1e-5 relative.
    assert reported["loss"] == pytest.approx(loss, rel=1e-5)
    assert reported["accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_user_dataset_mapping_of_splits(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    (xtr, ytr), (xva, yva) = _rows(40, 0, rng), _rows(10, 500, rng)
    module = tmp_path / "split_source.py"
    np.savez(tmp_path / "arrays.npz", xtr=xtr, ytr=ytr, xva=xva, yva=yva)
    module.write_text(
        "import numpy as np\n"
        "import fntrain\n"
        f"def make():\n"
        f"    a = np.load({str(tmp_path / 'arrays.npz')!r})\n"
        "    return {'train': (a['xtr'], a['ytr']), 'val': fntrain.data.Arrays(a['xva'], a['yva'])}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ft.load_config(_config(tmp_path, {"name": "split_source:make"}))
    splits = ft.data.load_splits(config)
    np.testing.assert_array_equal(splits.val.x, xva)  # given: used as it is
    # test is missing: round(0.3 * 40) = 12 rows drawn from train, the rest trains.
    assert (splits.test.num_examples, splits.train.num_examples) == (12, 28)
    assert set(_ids(splits.test.x)) | set(_ids(splits.train.x)) == set(range(40))
