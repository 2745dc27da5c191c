"""Data larger than memory: `.npy` files read a batch at a time (fntrain/data/lazy.py).

Views read exactly the rows asked for; splitting, casting and standardizing stay lazy and
give the numbers the in-memory path gives; a run on a `.npy` file equals the same run on
the arrays in memory, bit for bit; and a file larger than 1.5 GB trains and resumes
exactly with a peak resident memory far below its size.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

import fntrain as ft
from fntrain.data import Arrays, DataError, RowView, is_lazy, load_npy, open_npy

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _saved(tmp_path, a, name="a.npy") -> Path:
    path = tmp_path / name
    np.save(path, a)
    return path


def test_view_reads_the_rows_asked_for(tmp_path):
    a = np.arange(60, dtype=">f4").reshape(20, 3)  # big-endian on disk: read back native
    v = open_npy(_saved(tmp_path, a))
    assert v.shape == (20, 3) and v.dtype == np.float32 and v.dtype.isnative and len(v) == 20
    assert v.nbytes == 240 and v.ndim == 2
    for key in ([3, 1, 1, 19], [-1, 0], np.array([], np.int64), np.arange(5, 9)):
        np.testing.assert_array_equal(v[np.asarray(key, np.int64)], a[np.asarray(key, np.int64)])
    np.testing.assert_array_equal(v[2:17:3], a[2:17:3])
    np.testing.assert_array_equal(v[7], a[7])
    np.testing.assert_array_equal(v[:4, 1], a[:4, 1])
    np.testing.assert_array_equal(np.asarray(v), a)
    with pytest.raises(IndexError):
        v[np.array([20])]
    with pytest.raises(TypeError):
        v[np.ones(20, bool)]


def test_take_and_map_compose_without_reading(tmp_path):
    a = np.random.default_rng(0).normal(size=(50, 2, 3)).astype(np.float64)
    v = open_npy(_saved(tmp_path, a))
    rows = np.array([9, 4, 40, 4, 0])
    w = ft.data.take(ft.data.transform(v, lambda b: (b * 2).astype(np.float32)), rows).take(np.array([4, 1]))
    assert isinstance(w, RowView) and w.shape == (2, 2, 3) and w.dtype == np.float32
    np.testing.assert_array_equal(w[:], (a[rows][[4, 1]] * 2).astype(np.float32))
    # blocks: every row once, in file order, for reductions; small blocks cross the chunking.
    blocks = list(ft.data.take(v, rows).blocks(max_bytes=3 * 48))
    np.testing.assert_array_equal(np.concatenate(blocks), a[np.sort(rows)])
    # In memory, the same helpers are plain NumPy.
    np.testing.assert_array_equal(ft.data.take(a, rows), a[rows])
    assert not is_lazy(ft.data.take(a, rows))


def test_view_survives_pickling(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(6, 2)
    v = pickle.loads(pickle.dumps(open_npy(_saved(tmp_path, a)).take(np.array([5, 2]))))
    np.testing.assert_array_equal(v[:], a[[5, 2]])


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: np.save(p, np.asfortranarray(np.zeros((4, 3)))), "Fortran order"),
        (lambda p: np.save(p, np.array([{"a": 1}] * 3, dtype=object)), "without pickle"),
        (lambda p: np.save(p, np.float32(1.0)), "scalar"),
        (lambda p: np.savez(open(p, "wb"), x=np.zeros(3)), "an .npz archive"),
        (lambda p: (np.save(p, np.zeros((10, 3))), p.write_bytes(p.read_bytes()[:-8])), "truncated"),
        (lambda p: p.write_bytes(b"not numpy at all"), "could not be read as a .npy"),
    ],
    ids=["fortran", "objects", "scalar", "npz", "truncated", "garbage"],
)
def test_bad_npy_files_are_refused_with_the_path(tmp_path, write, match):
    path = tmp_path / "bad.npy"
    write(path)
    with pytest.raises(DataError, match=match) as e:
        open_npy(path)
    assert str(path) in str(e.value)


def _pair(tmp_path, n=100, f=6, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, f)) * [1.0, 5.0, 0.1, 1.0, 1.0, 0.0] + 3.0).astype(np.float32)
    y = (x[:, 0] > 3.0).astype(np.int64)
    return x, y, load_npy(_saved(tmp_path, x, "x.npy"), _saved(tmp_path, y, "y.npy"))


def test_splits_of_a_view_are_views_of_the_same_rows(tmp_path):
    x, y, lazy_arrays = _pair(tmp_path)
    key = jax.random.key(5)
    eager = ft.data.split_arrays(Arrays(x, y), val_fraction=0.2, test_fraction=0.1, key=key)
    lazy = ft.data.split_arrays(lazy_arrays, val_fraction=0.2, test_fraction=0.1, key=key)
    for e, v in zip(eager, lazy):
        assert is_lazy(v.x) and is_lazy(v.y)
        np.testing.assert_array_equal(v.x[:], e.x)
        np.testing.assert_array_equal(v.y[:], e.y)
    standardized, (mean, std) = ft.data.standardize(lazy)
    expected, (e_mean, e_std) = ft.data.standardize(eager)
    assert is_lazy(standardized.val.x)
    # Streaming (Chan) moments against NumPy's two-pass ones, float64 over 70 rows: 1e-6.
    np.testing.assert_allclose(mean, e_mean, rtol=1e-6)
    np.testing.assert_allclose(std, e_std, rtol=1e-6)
    np.testing.assert_allclose(standardized.val.x[:], expected.val.x, rtol=1e-6, atol=1e-6)


def _run_config(tmp_path, data: dict, out: str, steps: int = 12, **extra) -> ft.Config:
    raw = {
        "seed": 1,
        "output_dir": str(tmp_path / out),
        "data": {**data, "batch_size": 16, "val_fraction": 0.2, "test_fraction": 0.1, **extra},
        "model": {"name": "mlp", "hidden_sizes": [8]},
        "optimizer": {"name": "adam", "learning_rate": 0.01, "schedule": {"name": "constant"}},
        "loop": {"kind": "steps", "num_steps": steps, "eval_every_steps": 6},
        "log": {"every_steps": 3, "progress": "none"},
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return ft.load_config(path)


def _params(run_dir: Path) -> dict:
    with np.load(run_dir / "params.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_a_run_on_npy_files_equals_the_run_on_the_arrays_in_memory(tmp_path):
    import io

    x, y, _ = _pair(tmp_path, n=90)  # 63 train rows: the epoch's last batch is padded
    np.savez(tmp_path / "d.npz", x=x, y=y)
    npy = _run_config(tmp_path, {"name": "npy", "x_path": str(tmp_path / "x.npy"), "y_path": str(tmp_path / "y.npy")}, "npy")
    npz = _run_config(tmp_path, {"name": "npz", "path": str(tmp_path / "d.npz")}, "npz", on_device=False)
    a, b = ft.train(npy, stream=io.StringIO()), ft.train(npz, stream=io.StringIO())
    assert a.metrics == b.metrics
    pa, pb = _params(tmp_path / "npy"), _params(tmp_path / "npz")
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


# --------------------------------------------------------------------------- memory, in a subprocess

CHILD = """
import io, json, sys
import fntrain as ft, jax

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

jax.numpy.zeros(1).block_until_ready()
config = ft.load_config(sys.argv[1], sys.argv[2:])
base = hwm()
result = ft.train(config, stream=io.StringIO(), resume=True)
print(json.dumps({"base": base, "peak": hwm(), "steps": result.summary["steps"],
                  "resumed_from": result.summary["resumed_from_step"]}))
"""


def _write_big(tmp_path, rows: int, features: int = 784) -> tuple[Path, Path]:
    """x [rows, features] float32 written in chunks through open_memmap, and y [rows] int64."""
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, features))
    rng = np.random.default_rng(0)
    w = rng.normal(size=(features, 4)).astype(np.float32)
    y = np.empty(rows, np.int64)
    for start in range(0, rows, 1 << 15):
        block = rng.standard_normal(size=(min(1 << 15, rows - start), features), dtype=np.float32)
        x[start : start + len(block)] = block
        y[start : start + len(block)] = np.argmax(block @ w, axis=1)
    x.flush()
    del x
    np.save(y_path, y)
    return x_path, y_path


def _child(tmp_path, config_path: Path, *overrides: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(config_path), *overrides], env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _big_config(tmp_path, x_path: Path, y_path: Path, out: str, steps: int, **data) -> Path:
    raw = {
        "seed": 0,
        "output_dir": str(tmp_path / out),
        "data": {"name": "npy", "x_path": str(x_path), "y_path": str(y_path), "batch_size": 64,
                 "val_fraction": 0.01, "test_fraction": 0.0, "eval_batch_size": 1024, **data},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "optimizer": {"name": "adam", "learning_rate": 1e-3, "schedule": {"name": "constant"}},
        "loop": {"kind": "steps", "num_steps": steps, "eval_every_steps": 20},
        "log": {"every_steps": 10, "progress": "none"},
        "checkpoint": {"every_steps": 10},
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_data_read_from_disk_grows_memory_far_less_than_its_size(tmp_path):
    """~80 MB file: the run's memory grows by far less than the file beyond what the same run
    on a 1,000-row file grows (compilation and the runtime, in both)."""
    small = tmp_path / "small"
    small.mkdir()
    x_path, y_path = _write_big(tmp_path, rows=26_000)
    size = x_path.stat().st_size
    tiny = _child(tmp_path, _big_config(tmp_path, *_write_big(small, rows=1_000), "tiny", 20))
    lazy = _child(tmp_path, _big_config(tmp_path, x_path, y_path, "lazy", 20))
    data_growth = (lazy["peak"] - lazy["base"]) - (tiny["peak"] - tiny["base"])
    print(f"file {size / 2**20:.0f} MiB; growth beyond the 1,000-row run's: {data_growth / 2**20:.0f} MiB")
    assert data_growth < size / 4, (data_growth, size)


@pytest.mark.slow
def test_a_file_over_1_5_gb_trains_in_little_memory_and_resumes_exactly(tmp_path):
    """520k x 784 float32 (1.63 GB): three runs (40 steps; 20 steps then --resume to 40), each
    peaking far below the file's size, the resumed one bit-identical to the uninterrupted one."""
    x_path, y_path = _write_big(tmp_path, rows=520_000)
    size = x_path.stat().st_size
    assert size > 1.5e9
    try:
        whole = _child(tmp_path, _big_config(tmp_path, x_path, y_path, "whole", 40))
        half = _child(tmp_path, _big_config(tmp_path, x_path, y_path, "halves", 20))
        resumed = _child(tmp_path, _big_config(tmp_path, x_path, y_path, "halves", 40))
    finally:
        x_path.unlink()
    assert (whole["steps"], half["steps"], resumed["steps"], resumed["resumed_from"]) == (40, 20, 40, 20)
    print(f"file {size / 2**20:.0f} MiB; peaks {[round(r['peak'] / 2**20) for r in (whole, half, resumed)]} MiB")
    for run in (whole, half, resumed):
        assert run["peak"] < size / 3, (run, size)  # the whole process, JAX included
    pa, pb = _params(tmp_path / "whole"), _params(tmp_path / "halves")
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
