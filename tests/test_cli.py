"""End-to-end tests of the ``fntrain`` command line.

The training runs are made once, by one module fixture (``cli_runs``): the main
run and a user plugin run through ``python -m fntrain`` subprocesses, the rest
(and the evals) through ``fntrain.cli.main`` in this process while those run;
each test then checks the files one run left behind. Bad configs fail before any
training, so most of them run in-process through ``fntrain.cli.main`` and a few
run as subprocesses to prove the exit-2 / one-line / no-traceback contract end
to end.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import pytest
import yaml
from pydantic import BaseModel

from cli_contract import assert_one_error_line
from fntrain import cli
from fntrain import config as cfg

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
SUBPROCESS_TIMEOUT_S = 300

# --------------------------------------------------------------------------- helpers


def write_yaml(path: Path, raw: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


DELETE = object()  # set_dotted(raw, key, DELETE) removes the key


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """Sets ``a.b.c`` in nested dicts; ``DELETE`` removes the key."""
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (sections only; lists stay values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "kwargs":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def read_params(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "params.npz", allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """``fntrain.cli.main(argv)`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse errors exit rather than return
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def in_dir(tmp_path, monkeypatch):
    """Runs the test in ``tmp_path``; restores ``sys.path`` (a config's module folder is appended to it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    """An IDX (MNIST-format) file of uint8 data."""
    assert array.dtype == np.uint8
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


# --------------------------------------------------------------------------- the tiny configs


DIGITS_N, DIGITS_VAL, DIGITS_TEST = 1797, 180, 180  # round(0.1 * 1797) each
DIGITS_TRAIN = DIGITS_N - DIGITS_VAL - DIGITS_TEST
BATCH = 64
STEPS_PER_EPOCH = math.ceil(DIGITS_TRAIN / BATCH)  # 23, the last batch partial
NUM_STEPS, LOG_EVERY, EVAL_EVERY = 22, 5, 10
PEAK_LR = 5e-3


def digits_raw(output_dir: str) -> dict:
    """The file every digits run starts from; the CLI overrides below complete it."""
    return {
        "seed": 0,
        "output_dir": output_dir,
        "data": {"name": "digits", "batch_size": BATCH},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "optimizer": {"name": "adam", "learning_rate": 1e-2, "schedule": {"name": "linear"}},
        "loop": {"kind": "steps", "num_steps": NUM_STEPS, "eval_every_steps": EVAL_EVERY},
        "log": {"every_steps": LOG_EVERY, "grad_norm": True, "progress": "none"},
    }


A_OVERRIDES = ["model.hidden_sizes=[32,16]", "optimizer.learning_rate=5e-3"]


def a_expected_raw() -> dict:
    raw = digits_raw("runs/a")
    raw["model"]["hidden_sizes"] = [32, 16]
    raw["optimizer"]["learning_rate"] = PEAK_LR
    return raw


PLUGIN_MODULE = '''
"""A user's model and dataset, named in a config as cli_plugins:<function>."""
import json

import numpy as np

import fntrain


def blobs(num_examples, dim, scale, record, options=None):
    with open(record, "w") as f:
        json.dump({"num_examples": num_examples, "dim": dim, "scale": scale,
                   "scale_type": type(scale).__name__, "options": options}, f)
    rng = np.random.default_rng(0)
    y = np.arange(num_examples) % 2
    x = rng.normal(size=(num_examples, dim))
    x[:, 0] += 4.0 * (2 * y - 1)  # separable along the first feature
    return x.astype(np.float32), y.astype(np.int32)  # a plain (x, y) pair


def tiny_net(num_outputs, hidden):
    with open("model_called.json", "w") as f:
        json.dump({"num_outputs": num_outputs, "hidden": hidden}, f)
    return fntrain.nn.serial(fntrain.nn.dense(hidden), fntrain.nn.tanh, fntrain.nn.dense(num_outputs))
'''

PLUGIN_OPTIONS = {"pairs": [["a", 1], ["b", 2]], "empty": {}, "flag": True}
PLUGIN_N, PLUGIN_DIM, PLUGIN_HIDDEN = 200, 3, 4


def plugin_raw() -> dict:
    return {
        "seed": 0,
        "output_dir": "runs/plugin",
        "data": {
            "name": "cli_plugins:blobs",
            "kwargs": {"num_examples": PLUGIN_N, "dim": PLUGIN_DIM, "scale": 1e-3,
                       "record": "dataset_called.json", "options": PLUGIN_OPTIONS},
            "batch_size": 32,
        },
        "model": {"name": "cli_plugins:tiny_net", "kwargs": {"hidden": PLUGIN_HIDDEN}},
        "optimizer": {"name": "adam", "learning_rate": 0.05},
        "loop": {"kind": "steps", "num_steps": 30},
        "log": {"every_steps": 10, "progress": "none"},
    }


NPZ_N, NPZ_F, NPZ_CLASSES = 240, 6, 3  # val/test 24 each, train 192 = 6 batches of 32


def write_loader_files(base: Path) -> None:
    rng = np.random.default_rng(123)
    (base / "data").mkdir(exist_ok=True)
    # npz: 3 classes decided by the arg-max of a fixed linear map, under non-default key names.
    x = rng.normal(size=(NPZ_N, NPZ_F)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(NPZ_F, NPZ_CLASSES)), axis=1).astype(np.int64)
    np.savez(base / "data" / "train.npz", inputs=x, labels=y)
    # idx (gzipped): 8x8 uint8 images with a bright row at 2 * label.
    labels = (np.arange(160) % 4).astype(np.uint8)
    images = rng.integers(0, 60, size=(160, 8, 8)).astype(np.uint8)
    images[np.arange(160), 2 * labels, :] = 255
    write_idx(base / "data" / "images-idx3-ubyte.gz", images, gz=True)
    write_idx(base / "data" / "labels-idx1-ubyte.gz", labels, gz=True)
    # csv: a header, regression target in a named middle column.
    feats = rng.normal(size=(150, 3))
    target = feats @ np.array([1.0, -2.0, 0.5]) + 0.3
    lines = ["f1,price,f2,f3"] + [f"{a:.6f},{t:.6f},{b:.6f},{c:.6f}" for (a, b, c), t in zip(feats, target)]
    (base / "data" / "houses.csv").write_text("\n".join(lines) + "\n")


def loader_raws() -> dict[str, dict]:
    common = {"seed": 0, "log": {"every_steps": 4, "progress": "none"}}
    return {
        "npz": {
            **common,
            "output_dir": "runs/npz",
            "data": {"name": "npz", "path": "data/train.npz", "x_key": "inputs", "y_key": "labels", "batch_size": 32},
            "model": {"name": "mlp", "hidden_sizes": [16]},
            "optimizer": {"name": "adam", "learning_rate": 0.02},
            "loop": {"kind": "epochs", "num_epochs": 2},
        },
        "idx": {
            **common,
            "output_dir": "runs/idx",
            "data": {
                "name": "idx",
                "images_path": "data/images-idx3-ubyte.gz",
                "labels_path": "data/labels-idx1-ubyte.gz",
                "batch_size": 32,
            },
            "model": {"name": "mlp", "hidden_sizes": [8], "norm": "batch"},
            "optimizer": {"name": "adam", "learning_rate": 0.01},
            "loop": {"kind": "steps", "num_steps": 6},
        },
        "csv": {
            **common,
            "output_dir": "runs/csv",
            "data": {"name": "csv", "path": "data/houses.csv", "target_column": "price", "target_dtype": "float",
                     "standardize": True, "batch_size": 30},
            "model": {"name": "mlp", "hidden_sizes": [8]},
            "loss": {"name": "mean_squared_error"},
            "optimizer": {"name": "adam", "learning_rate": 0.02},
            "loop": {"kind": "steps", "num_steps": 8},
        },
    }


# --------------------------------------------------------------------------- bad configs


class Bad(NamedTuple):
    """A config the CLI must refuse: exit 2 and one ``error:`` line holding every needle.

    ``{cfg}`` in a needle stands for the config file's name.
    """

    edit: dict = {}  # dotted key -> value (or DELETE) applied to bad_base() before writing bad.yaml
    args: tuple = ()  # extra command-line arguments (overrides, flags)
    needles: tuple = ()
    text: Optional[str] = None  # write this text as bad.yaml instead of bad_base()
    config: str = "bad.yaml"
    setup: Optional[Callable[[Path], None]] = None


def bad_base() -> dict:
    return {
        "seed": 0,
        "output_dir": "out",
        "data": {"name": "digits", "batch_size": 64},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "loop": {"kind": "steps", "num_steps": 3},
        "log": {"progress": "none"},
    }


def _npz_with_keys(d: Path):
    np.savez(d / "keys.npz", inputs=np.zeros((20, 3), np.float32), labels=np.zeros(20, np.int32))


def _npz_with_objects(d: Path):
    np.savez(d / "objects.npz", x=np.array([{"a": 1}] * 20, dtype=object), y=np.zeros(20, np.int32))


def _csv_with_text(d: Path):
    (d / "bad.csv").write_text("a,b,label\n1,2,0\n1,x,1\n3,4,1\n")


def _idx_bad_magic(d: Path):
    (d / "images").write_bytes(b"\x01\x02\x03\x04" + bytes(64))
    write_idx(d / "labels", np.zeros(1, np.uint8), gz=False)


def _a_directory(d: Path):
    (d / "adir.yaml").mkdir()


# Bad data: each writes its files into the case's directory. Inputs [20, 3] with 2 classes
# unless a case says otherwise; row 3 (or line 4 of a CSV) holds the bad value.
def _npz_case(name: str = "d.npz", **overrides):
    def setup(d: Path):
        rng = np.random.default_rng(0)
        arrays = {"x": rng.normal(size=(20, 3)).astype(np.float32), "y": (np.arange(20) % 2).astype(np.int32)}
        for key, edit in overrides.items():
            arrays[key] = edit(arrays.get(key, arrays["x" if key.startswith("x") else "y"]).copy())
        np.savez(d / name, **arrays)
    return setup


def _at_row_3(value):
    def edit(a):
        a = a.astype(np.float64) if isinstance(value, float) and a.dtype.kind != "f" else a
        a[(3,) + (1,) * (a.ndim - 1)] = value
        return a
    return edit


def _npz_file(data: bytes):
    return lambda d: (d / "d.npz").write_bytes(data)


def _npy_case(d: Path, x_edit=None, y_edit=None):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)).astype(np.float32), (np.arange(20) % 2).astype(np.int64)
    np.save(d / "x.npy", x_edit(x) if x_edit else x)
    np.save(d / "y.npy", y_edit(y) if y_edit else y)


def _csv_case(text: bytes):
    return lambda d: (d / "d.csv").write_bytes(text)


def _idx_float_labels(d: Path):
    write_idx(d / "images", np.zeros((20, 4, 4), np.uint8), gz=False)
    labels = (np.arange(20) % 2).astype(">f4")
    labels[3] = 2.7
    header = struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 20)
    (d / "labels").write_bytes(header + labels.tobytes())


def _idx_gzip_bomb(d: Path):
    """Labels whose header declares 20 bytes but whose gzip stream inflates to 256 MB."""
    write_idx(d / "images", np.zeros((20, 4, 4), np.uint8), gz=False)
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 20)
    chunks = [packer.compress(header)] + [packer.compress(bytes(1 << 20)) for _ in range(256)] + [packer.flush()]
    (d / "labels.gz").write_bytes(b"".join(chunks))


def _user_dataset(module: str, body: str):
    def setup(d: Path):
        (d / f"{module}.py").write_text("import numpy as np\n\ndef make():\n" + body)
    return setup


_NPZ = {"name": "npz", "path": "d.npz", "batch_size": 8}
_NPY = {"name": "npy", "x_path": "x.npy", "y_path": "y.npy", "batch_size": 8}
_CSV = {"name": "csv", "path": "d.csv", "batch_size": 8}
_CSV_ROWS = b"a,b,label\n" + b"".join(b"%d.5,%d,%d\n" % (i, -i, i % 2) for i in range(12))
BAD_DATA_CASES = {
    # NaN and inf, in inputs and targets, from every kind of source
    "npz-nan-input": Bad({"data": _NPZ}, setup=_npz_case(x=_at_row_3(np.nan)),
                         needles=("d.npz", "array 'x'", "row 3", "nan")),
    "npz-inf-in-test-split": Bad({"data": _NPZ}, setup=_npz_case(x_test=_at_row_3(np.inf), y_test=lambda y: y),
                                 needles=("d.npz", "array 'x_test'", "row 3", "inf")),
    "npz-nan-regression-target": Bad({"data": _NPZ, "loss": {"name": "mse"}},
                                     setup=_npz_case(y=lambda y: _at_row_3(np.nan)(y.astype(np.float32))),
                                     needles=("d.npz", "array 'y'", "row 3", "nan")),
    "npy-nan-input": Bad({"data": _NPY}, setup=lambda d: _npy_case(d, x_edit=_at_row_3(np.nan)),
                         needles=("x.npy", "row 3", "nan")),
    "csv-nan-cell": Bad({"data": _CSV}, setup=_csv_case(_CSV_ROWS.replace(b"3.5,-3", b"nan,-3")),
                        needles=("d.csv", "line 5", "column 1 ('a')", "nan")),
    "user-dataset-nan": Bad({"data": {"name": "nan_rows:make"}},
                            setup=_user_dataset("nan_rows", "    x = np.ones((20, 3))\n    x[3, 1] = np.inf\n"
                                                "    return x, np.arange(20) % 2\n"),
                            needles=("dataset 'nan_rows:make'", ": x", "row 3", "inf")),
    # class labels: negative, not whole numbers, beyond the model, absurdly large
    "npz-negative-label": Bad({"data": _NPZ}, setup=_npz_case(y=_at_row_3(-1)), needles=("d.npz", "array 'y'", "row 3", "-1")),
    "npy-negative-label": Bad({"data": _NPY}, setup=lambda d: _npy_case(d, y_edit=_at_row_3(-4)),
                              needles=("y.npy", "row 3", "-4")),
    "npz-fractional-label": Bad({"data": _NPZ}, setup=_npz_case(y=_at_row_3(2.7)),
                                needles=("d.npz", "array 'y'", "row 3", "2.7", "integer")),
    "label-beyond-model-outputs": Bad({"data": _NPZ, "model": {"name": "mlp", "hidden_sizes": [8], "num_outputs": 3}},
                                      setup=_npz_case(y=_at_row_3(5)),
                                      needles=("d.npz", "array 'y'", "row 3", "label 5", "3 outputs")),
    "label-beyond-user-model": Bad({"data": _NPZ, "model": {"name": "fntrain.nn:mlp", "kwargs": {"hidden_sizes": [8], "num_outputs": 2}}},
                                   setup=_npz_case(y=_at_row_3(4)), needles=("d.npz", "label 4", "2 outputs")),
    "huge-label": Bad({"data": _NPZ}, setup=_npz_case(y=_at_row_3(10**9)),
                      needles=("d.npz", "array 'y'", "row 3", "1000000000", "100,000")),
    "binary-label-2": Bad({"data": _NPZ, "loss": {"name": "sigmoid_binary_cross_entropy"}}, setup=_npz_case(y=_at_row_3(2)),
                          needles=("d.npz", "array 'y'", "row 3", "label 2")),
    "idx-float-label": Bad({"data": {"name": "idx", "images_path": "images", "labels_path": "labels", "batch_size": 8}},
                           setup=_idx_float_labels, needles=("labels", "row 3", "2.7")),
    # damaged or mistaken files
    "idx-gzip-bomb": Bad({"data": {"name": "idx", "images_path": "images", "labels_path": "labels.gz"}},
                         setup=_idx_gzip_bomb, needles=("labels.gz", "more than the 20 bytes", "header")),
    "npz-truncated": Bad({"data": _NPZ}, setup=lambda d: (_npz_case()(d), (d / "d.npz").write_bytes((d / "d.npz").read_bytes()[:300])),
                         needles=("d.npz", "truncated or damaged")),
    "npz-empty-file": Bad({"data": _NPZ}, setup=_npz_file(b""), needles=("d.npz", "empty file")),
    "npz-not-a-zip": Bad({"data": _NPZ}, setup=_npz_file(b"x,y\n1,2\n"), needles=("d.npz", "not an .npz archive", "x,y")),
    "npy-named-npz": Bad({"data": _NPZ}, setup=lambda d: np.save(open(d / "d.npz", "wb"), np.zeros((20, 3))),
                         needles=("d.npz", "a .npy file")),
    "npy-truncated": Bad({"data": _NPY}, setup=lambda d: (_npy_case(d), (d / "x.npy").write_bytes((d / "x.npy").read_bytes()[:-9])),
                         needles=("x.npy", "truncated")),
    "csv-not-utf8": Bad({"data": _CSV}, setup=_csv_case(_CSV_ROWS.replace(b"2.5,-2", b"2.5\xe9,-2")),
                        needles=("d.csv", "line 4", "0xe9", "UTF-8")),
    "csv-multichar-delimiter": Bad({"data": {**_CSV, "delimiter": ";;"}}, setup=_csv_case(_CSV_ROWS),
                                   needles=("data.delimiter", "1 character", "{cfg}")),
    # arrays that are not numbers, or hold nothing
    "npz-empty-array": Bad({"data": _NPZ}, setup=_npz_case(x=lambda x: x[:0], y=lambda y: y[:0]),
                           needles=("d.npz", "array 'x'", "no rows")),
    "npz-string-array": Bad({"data": _NPZ}, setup=_npz_case(x=lambda x: x.astype(str)),
                            needles=("d.npz", "array 'x'", "<U", "text")),
    "user-dataset-strings": Bad({"data": {"name": "text_rows:make"}},
                                setup=_user_dataset("text_rows", "    return np.array([['a', 'b']] * 20), np.arange(20) % 2\n"),
                                needles=("dataset 'text_rows:make'", ": x", "text")),
    "standardize-targets-on-labels": Bad(args=("data.standardize_targets=true",),
                                         needles=("data.standardize_targets", "int32", "softmax_cross_entropy")),
    "user-dataset-bad-split-name": Bad({"data": {"name": "split_names:make"}},
                                       setup=_user_dataset("split_names", "    x = np.ones((20, 3))\n"
                                                           "    return {'train': (x, np.arange(20) % 2), 'tst': (x, x)}\n"),
                                       needles=("split_names:make", "'tst'", "'train'")),
}


def base_text(extra: str = "") -> str:
    """bad_base() as YAML text, with ``extra`` lines after it (from line ``EXTRA_LINE`` on)."""
    return yaml.safe_dump(bad_base(), sort_keys=False) + extra


EXTRA_LINE = f"line {len(base_text().splitlines()) + 1}"


def _module(name: str, source: str) -> Callable[[Path], None]:
    """A setup writing ``name.py`` beside the config."""
    return lambda d: (d / f"{name}.py").write_text(source)


def _with_model(name: str) -> dict:
    return {"model": {"name": name}}


BAD_CASES = {
    # unknown keys, with suggestions
    "unknown-top-level-key": Bad({"optimiser": {"name": "sgd"}}, needles=("optimiser", "did you mean 'optimizer'", "{cfg}")),
    "unknown-nested-key-in-file": Bad({"data.batch_sise": 32}, needles=("data.batch_sise", "did you mean 'batch_size'", "{cfg}")),
    "unknown-nested-key-override": Bad(args=("optimizer.learnin_rate=0.1",), needles=("optimizer.learnin_rate", "did you mean 'learning_rate'", "{cfg}")),
    "unknown-schedule-key": Bad(args=("optimizer.schedule.warmup=5",), needles=("optimizer.schedule.warmup", "did you mean 'warmup_steps'", "{cfg}")),
    # wrong types
    "batch-size-string": Bad(args=("data.batch_size=sixty",), needles=("data.batch_size", "'sixty'", "{cfg}")),
    "batch-size-bool": Bad(args=("data.batch_size=true",), needles=("data.batch_size", "{cfg}")),
    "hidden-sizes-scalar": Bad(args=("model.hidden_sizes=256",), needles=("model.hidden_sizes", "{cfg}")),
    "hidden-sizes-bad-element": Bad(args=("model.hidden_sizes=[64, wide]",), needles=("model.hidden_sizes[1]", "{cfg}")),
    "learning-rate-string": Bad(args=("optimizer.learning_rate=fast",), needles=("optimizer.learning_rate", "{cfg}")),
    "seed-string": Bad(args=("seed=abc",), needles=("seed", "{cfg}")),
    "output-dir-list": Bad(args=("output_dir=[a, b]",), needles=("output_dir", "{cfg}")),
    "kwargs-not-a-mapping": Bad({"model": {"name": "fntrain.nn:mlp", "kwargs": [8, 8]}}, needles=("model.kwargs", "mapping", "{cfg}")),
    # out of range
    "negative-learning-rate": Bad(args=("optimizer.learning_rate=-3e-4",), needles=("optimizer.learning_rate", "greater than 0", "{cfg}")),
    "zero-learning-rate": Bad(args=("optimizer.learning_rate=0",), needles=("optimizer.learning_rate", "{cfg}")),
    "zero-batch-size": Bad(args=("data.batch_size=0",), needles=("data.batch_size", "{cfg}")),
    "zero-eval-batch-size": Bad(args=("data.eval_batch_size=0",), needles=("data.eval_batch_size", "{cfg}")),
    "negative-num-steps": Bad(args=("loop.num_steps=-5",), needles=("loop.num_steps", "{cfg}")),
    "zero-num-epochs": Bad(args=("loop.kind=epochs", "loop.num_epochs=0"), needles=("loop.num_epochs", "{cfg}")),
    "zero-hidden-width": Bad(args=("model.hidden_sizes=[64, 0]",), needles=("model.hidden_sizes[1]", "{cfg}")),
    "val-fraction-above-one": Bad(args=("data.val_fraction=1.5",), needles=("data.val_fraction", "{cfg}")),
    "negative-test-fraction": Bad(args=("data.test_fraction=-0.1",), needles=("data.test_fraction", "{cfg}")),
    "dropout-rate-one": Bad(args=("model.dropout_rate=1.0",), needles=("model.dropout_rate", "{cfg}")),
    "momentum-one": Bad(args=("optimizer.name=momentum", "optimizer.momentum=1.0"), needles=("optimizer.momentum", "{cfg}")),
    "label-smoothing-one": Bad(args=("loss.label_smoothing=1",), needles=("loss.label_smoothing", "{cfg}")),
    "val-plus-test-fraction-one": Bad(args=("data.val_fraction=0.5", "data.test_fraction=0.5"), needles=("data", "val_fraction + test_fraction", "{cfg}")),
    # unknown names
    "unknown-optimizer": Bad(args=("optimizer.name=adamm",), needles=("optimizer.name", "adamm", "{cfg}")),
    "unknown-schedule": Bad(args=("optimizer.schedule.name=cosin",), needles=("optimizer.schedule.name", "cosin", "{cfg}")),
    "unknown-activation": Bad(args=("model.activation=relux",), needles=("model.activation", "relux", "{cfg}")),
    "unknown-norm": Bad(args=("model.norm=group",), needles=("model.norm", "group", "{cfg}")),
    "unknown-pool": Bad({"model": {"name": "cnn", "pool": "min"}}, needles=("model.pool", "min", "{cfg}")),
    "unknown-progress": Bad(args=("log.progress=fancy",), needles=("log.progress", "fancy", "{cfg}")),
    "unknown-data-name": Bad(args=("data.name=mnist",), needles=("data.name", "mnist", "{cfg}")),
    "unknown-model-name": Bad({"model": {"name": "resnett"}}, needles=("model.name", "resnett", "did you mean 'resnet'", "{cfg}")),
    "unknown-loss-suggestion": Bad(args=("loss.name=softmax_crossentropy",), needles=("loss.name", "did you mean 'softmax_cross_entropy'", "{cfg}")),
    "custom-model-no-module": Bad({"model": {"name": "no_such_module:fn"}}, needles=("model.name", "no_such_module", "{cfg}")),
    "custom-model-no-attribute": Bad({"model": {"name": "fntrain.nn:no_such_fn"}}, needles=("model.name", "no_such_fn", "{cfg}")),
    "unknown-metric": Bad(args=("metrics=[accuracy, acuracy]",), needles=("metrics[1]", "did you mean 'accuracy'", "{cfg}")),
    "unknown-callback": Bad({"callbacks": [{"name": "no_such_callback"}]}, needles=("callbacks[0].name", "no_such_callback", "{cfg}")),
    # keys of another variant
    "loss-key-of-another-loss": Bad({"loss": {"name": "mse", "label_smoothing": 0.1}},
                                    needles=("loss.label_smoothing", "'mse'", "softmax_cross_entropy", "{cfg}")),
    "kwargs-for-a-builtin-loss": Bad({"loss": {"name": "huber", "kwargs": {"delta": 2.0}}}, needles=("loss.kwargs", "'huber'", "{cfg}")),
    "optimizer-key-of-another-optimizer": Bad(args=("optimizer.name=sgd", "optimizer.b1=0.5"),
                                              needles=("optimizer.b1", "'sgd'", "adam", "{cfg}")),
    "schedule-name-override-leaves-other-keys": Bad(
        {"optimizer": {"schedule": {"name": "warmup_cosine", "warmup_steps": 2}}}, args=("optimizer.schedule.name=constant",),
        needles=("optimizer.schedule.warmup_steps", "'constant'", "warmup_cosine", "optimizer.schedule={name: constant}", "{cfg}"),
    ),
    # cross-field rules
    "epochs-without-num-epochs": Bad(args=("loop.kind=epochs",), needles=("loop", "num_epochs", "{cfg}")),
    "steps-without-num-steps": Bad({"loop": {"kind": "steps"}}, needles=("loop", "num_steps", "{cfg}")),
    "piecewise-length-mismatch": Bad(
        args=("optimizer.schedule.name=piecewise", "optimizer.schedule.boundaries=[10, 20]", "optimizer.schedule.scales=[0.1]"),
        needles=("optimizer.schedule.scales", "1 given for 2 boundaries", "{cfg}"),
    ),
    "piecewise-decreasing": Bad(
        args=("optimizer.schedule.name=piecewise", "optimizer.schedule.boundaries=[20, 10]", "optimizer.schedule.scales=[0.5, 0.5]"),
        needles=("optimizer.schedule", "increasing", "{cfg}"),
    ),
    "objective-with-loss": Bad({"objective": {"name": "fntrain.step:supervised_loss"}, "loss": {"name": "mse"}},
                               needles=("objective", "either objective or a loss section", "{cfg}")),
    "objective-with-metrics": Bad({"objective": {"name": "fntrain.step:supervised_loss"}}, args=("metrics=[accuracy]",),
                                  needles=("metrics", "objective", "{cfg}")),
    "adam-with-weight-decay": Bad(args=("optimizer.name=adam", "optimizer.weight_decay=1e-2"), needles=("optimizer", "weight_decay", "adamw", "{cfg}")),
    "warmup-not-below-decay": Bad(
        args=("optimizer.schedule.name=warmup_cosine", "optimizer.schedule.warmup_steps=3"),
        needles=("optimizer.schedule.warmup_steps",),
    ),
    # optimizer recipes
    "optax-bad-kwarg": Bad({"optimizer": {"name": "optax:lion", "kwargs": {"betaa": 0.9}}},
                           needles=("optimizer.kwargs.betaa: not a parameter of optax.lion(learning_rate, b1=0.9, b2=0.99,",
                                    "{cfg}")),
    "optax-unknown-alias": Bad(args=("optimizer.name=optax:lamm",), needles=("optimizer.name", "did you mean 'optax:lamb'", "{cfg}")),
    "plain-name-of-an-optax-alias": Bad(args=("optimizer.name=lion",), needles=("optimizer.name", "did you mean 'optax:lion'", "{cfg}")),
    "accumulate-steps-not-dividing-batch": Bad(args=("optimizer.accumulate_steps=5",),
                                               needles=("optimizer.accumulate_steps (5)", "data.batch_size (64)", "{cfg}")),
    "group-matching-nothing": Bad({"optimizer": {"groups": [{"match": "^dense_1/"}, {"match": "^embed", "frozen": True}]}},
                                  needles=("optimizer.groups[1].match", "'^embed'", "matches no parameter")),
    "group-bad-regex": Bad({"optimizer": {"groups": [{"match": "dense_(0"}]}},
                           needles=("optimizer.groups[0].match", "not a regular expression", "{cfg}")),
    "ema-eval-without-decay": Bad(args=("optimizer.ema_eval=ema",), needles=("optimizer.ema_eval", "ema_decay", "{cfg}")),
    "plateau-unknown-metric": Bad({"optimizer": {"reduce_on_plateau": {"metric": "acc"}}},
                                  needles=("optimizer.reduce_on_plateau.metric", "'acc'", "accuracy")),
    # missing pieces
    "missing-model-section": Bad({"model": DELETE}, needles=("model", "required", "{cfg}")),
    "data-without-name": Bad({"data.name": DELETE}, needles=("data", "name", "{cfg}")),
    "empty-file": Bad(text="", needles=("data", "model", "loop", "{cfg}")),
    # override syntax
    "override-without-equals": Bad(args=("noequals",), needles=("noequals", "dotted.key=value")),
    "override-empty-key-part": Bad(args=("optimizer..name=sgd",), needles=("optimizer..name",)),
    "override-into-non-section": Bad(args=("seed.value=1",), needles=("seed.value", "seed is not a section")),
    "override-invalid-yaml": Bad(args=("model.hidden_sizes=[64,",), needles=("model.hidden_sizes", "invalid YAML")),
    # the file itself
    "invalid-yaml-syntax": Bad(text="seed: 0\ndata: {name: digits\nmodel: mlp\n", needles=("{cfg}", "invalid YAML", "line")),
    "top-level-list": Bad(text="- seed: 0\n- output_dir: out\n", needles=("{cfg}", "mapping", "list")),
    "missing-config-file": Bad(config="nope.yaml", needles=("nope.yaml", "does not exist")),
    "config-is-a-directory": Bad(config="adir.yaml", setup=_a_directory, needles=("adir.yaml",)),
    # data files and data/model fit
    "missing-npz-file": Bad({"data": {"name": "npz", "path": "missing.npz"}}, needles=("missing.npz", "not found")),
    "npz-missing-key": Bad({"data": {"name": "npz", "path": "keys.npz"}}, setup=_npz_with_keys, needles=("keys.npz", "'x'", "inputs", "labels")),
    "npz-object-array": Bad({"data": {"name": "npz", "path": "objects.npz"}}, setup=_npz_with_objects, needles=("objects.npz", "pickle")),
    "csv-non-numeric": Bad({"data": {"name": "csv", "path": "bad.csv"}}, setup=_csv_with_text, needles=("bad.csv", "line 3", "'x'")),
    "idx-bad-magic": Bad({"data": {"name": "idx", "images_path": "images", "labels_path": "labels"}}, setup=_idx_bad_magic, needles=("images", "magic")),
    "cnn-on-2d-features": Bad(
        {"data": {"name": "regression", "num_examples": 60}, "model": {"name": "cnn"}, "loss": {"name": "mse"}},
        needles=("does not fit", "'cnn'"),
    ),
    "huber-on-class-labels": Bad({"loss": {"name": "huber"}}, needles=("does not fit", "'huber'")),
    "custom-model-returns-no-module": Bad({"model": {"name": "fntrain.data:load_digits"}}, needles=("fntrain.data:load_digits", "fntrain.nn.Module")),
    "custom-model-kwarg-typo": Bad({"model": {"name": "fntrain.nn:mlp", "kwargs": {"hidden_size": [8]}}}, needles=("hidden_size",)),
    "custom-dataset-kwarg-typo": Bad(
        {"data": {"name": "fntrain.data:make_classification", "kwargs": {"num_exampels": 100}}}, needles=("num_exampels",)
    ),
    # the command line
    "unknown-cli-flag": Bad(args=("--fast",), needles=("--fast",)),
    "eval-unknown-flag": Bad(args=("--overwrite",), needles=("--overwrite",)),  # eval has no --overwrite
    **BAD_DATA_CASES,
    # non-finite floats, floats for ints, counts past int32 (each trained or hung before)
    "learning-rate-inf": Bad(args=("optimizer.learning_rate=.inf",), needles=("optimizer.learning_rate", "finite", "{cfg}")),
    "learning-rate-nan": Bad(args=("optimizer.learning_rate=.nan",), needles=("optimizer.learning_rate", "finite", "{cfg}")),
    "clip-grad-norm-inf": Bad(args=("optimizer.clip_grad_norm=.inf",), needles=("optimizer.clip_grad_norm", "finite", "{cfg}")),
    "min-delta-inf": Bad(args=("early_stopping.min_delta=.inf",), needles=("early_stopping.min_delta", "finite", "{cfg}")),
    "piecewise-scale-nan": Bad({"optimizer": {"schedule": {"name": "piecewise", "boundaries": [1], "scales": [float("nan")]}}},
                               needles=("optimizer.schedule.scales[0]", "finite", "{cfg}")),
    "piecewise-length-mismatch-in-file": Bad({"optimizer": {"schedule": {"name": "piecewise", "boundaries": [1, 2], "scales": [0.5]}}},
                                             needles=("optimizer.schedule.scales", "1 given for 2 boundaries", "{cfg}")),
    "num-steps-a-float": Bad(args=("loop.num_steps=1e20",), needles=("loop.num_steps", "valid integer", "{cfg}")),
    "num-steps-past-int32": Bad(args=("loop.num_steps=100000000000000000000",), needles=("loop.num_steps", "2147483647", "{cfg}")),
    "total-steps-past-int32": Bad(args=("loop.kind=epochs", "loop.num_epochs=2000000000"),
                                  needles=("loop.num_epochs", "epochs of 23 steps", "2147483647", "{cfg}")),
    "batch-size-past-int32": Bad(args=("data.batch_size=1099511627776",), needles=("data.batch_size", "2147483647", "{cfg}")),
    "hidden-width-past-memory": Bad(args=("model.hidden_sizes=[1000000, 1000000]",),
                                    needles=("model:", "model 'mlp'", "1e+12 parameters", "TiB", "{cfg}")),
    "batch-past-memory": Bad(args=("data.batch_size=2000000000",), needles=("data.batch_size", "per batch", "{cfg}")),
    # YAML that says one thing twice, nests without end, or cannot be a number
    "duplicate-top-level-key": Bad(text=base_text("seed: 3\n"), needles=("{cfg}", EXTRA_LINE, "'seed'", "twice", "line 1")),
    "duplicate-nested-key": Bad(text=base_text("optimizer: {name: sgd, learning_rate: 0.1, name: adam}\n"),
                                needles=("{cfg}", EXTRA_LINE, "'name'", "twice")),
    "deeply-nested": Bad(text=base_text("x: " + "[" * 500 + "]" * 500 + "\n"), needles=("{cfg}", EXTRA_LINE, "nested deeper than 64")),
    "integer-of-5000-digits": Bad(text=base_text("x: " + "9" * 5000 + "\n"), needles=("{cfg}", EXTRA_LINE, "digits")),
    # missing names
    "model-without-name": Bad({"model": {"hidden_sizes": [8]}},
                              needles=("model.name: required; one of mlp, cnn", "module.path:function", "{cfg}")),
    # a user's module that cannot be imported: the key, the module and its error's first line
    "import-raises": Bad(_with_model("raising_mod:build"), setup=_module("raising_mod", "raise RuntimeError('kaboom\\nmore')\n"),
                         needles=("model.name", "'raising_mod'", "RuntimeError: kaboom", "raising_mod.py:1", "{cfg}")),
    "import-syntax-error": Bad(_with_model("syntax_mod:build"), setup=_module("syntax_mod", "def build(:\n"),
                               needles=("model.name", "'syntax_mod'", "SyntaxError", "line 1", "{cfg}")),
    "import-relative-name": Bad(_with_model("..evil:build"), needles=("model.name", "'..evil:build'", "relative", "{cfg}")),
    "import-calls-sys-exit": Bad(_with_model("exiting_mod:build"), setup=_module("exiting_mod", "import sys\nsys.exit(7)\n"),
                                 needles=("model.name", "'exiting_mod'", "sys.exit(7)", "{cfg}")),
    "import-missing-dependency": Bad(_with_model("needy_mod:build"), setup=_module("needy_mod", "import no_such_dependency\n"),
                                     needles=("model.name", "'needy_mod'", "No module named 'no_such_dependency'", "{cfg}")),
    "metric-import-raises": Bad({"metrics": ["raising_metric:fn"]}, setup=_module("raising_metric", "1 / 0\n"),
                                needles=("metrics[0]", "'raising_metric'", "ZeroDivisionError", "{cfg}")),
    "module-named-like-the-stdlib": Bad(_with_model("queue:build"), setup=_module("queue", "def build():\n    pass\n"),
                                        needles=("model.name", "'queue'", "queue.py", "rename", "{cfg}")),
    "module-not-beside-the-config": Bad(_with_model("elsewhere_mod:build"),
                                        needles=("model.name", "no module 'elsewhere_mod'", "config's folder", "{cfg}")),
}
SUBPROCESS_BAD_CASES = ("unknown-top-level-key", "missing-npz-file", "npy-nan-input")


def materialize(case: Bad, d: Path, command: str = "train") -> list[str]:
    """Writes the case's files into ``d``; returns the CLI arguments."""
    if case.setup:
        case.setup(d)
    if case.text is not None:
        (d / case.config).write_text(case.text)
    elif case.config == "bad.yaml":
        raw = bad_base()
        for key, value in case.edit.items():
            set_dotted(raw, key, value)
        write_yaml(d / case.config, raw)
    return [command, case.config, *case.args]


def bad_argv(case_id: str, d: Path) -> list[str]:
    return materialize(BAD_CASES[case_id], d, "eval" if case_id.startswith("eval-") else "train")


# --------------------------------------------------------------------------- the subprocess runs


def _safe(name: str) -> str:
    return name.replace(":", "_")


class Run(NamedTuple):
    rc: int
    stdout: str
    stderr: str

    def check(self):
        assert self.rc == 0, f"exit code {self.rc}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return self


def _start(args: list[str], cwd: Path, logs: Path, name: str):
    out = open(logs / f"{name}.stdout", "w")
    err = open(logs / f"{name}.stderr", "w")
    # -P: Python itself does not put the cwd on sys.path, so a `module:function` beside the
    # config is found only through its module_dir, as for the `fntrain` console script.
    proc = subprocess.Popen([sys.executable, "-P", "-m", "fntrain", *args], cwd=cwd, env=ENV, stdout=out, stderr=err)
    return proc, out, err


def _finish(started, logs: Path) -> dict[str, Run]:
    runs = {}
    for name, (proc, out, err) in started.items():
        try:
            rc = proc.wait(timeout=SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        out.close()
        err.close()
        runs[name] = Run(rc, (logs / f"{_safe(name)}.stdout").read_text(), (logs / f"{_safe(name)}.stderr").read_text())
    return runs


def main_in_process(argv: list[str], cwd: Path) -> Run:
    """``fntrain.cli.main(argv)`` in ``cwd`` with stdout/stderr captured (for module fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(sys, "path", list(sys.path))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                rc = e.code
    return Run(rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Every training run of this module: ``(base dir, {name: Run})``.

    Subprocesses (``python -m fntrain``) for run a, the user plugin and two bad configs
    start at once; the remaining runs (a's twin b among them, so that determinism is
    checked across processes) go through ``cli.main`` in this process meanwhile, so
    that the JAX start-up and compile costs overlap.
    """
    base = tmp_path_factory.mktemp("cli")
    write_yaml(base / "a.yaml", digits_raw("runs/a"))
    write_yaml(base / "plugin.yaml", plugin_raw())
    (base / "cli_plugins.py").write_text(PLUGIN_MODULE)
    write_loader_files(base)
    for name, raw in loader_raws().items():
        write_yaml(base / f"{name}.yaml", raw)
    logs = base / "logs"
    logs.mkdir()

    jobs = {
        "a": (["train", "a.yaml", *A_OVERRIDES], base),
        "plugin": (["train", "plugin.yaml"], base),
    }
    for case_id in SUBPROCESS_BAD_CASES:
        d = base / f"bad_{case_id}"
        d.mkdir()
        jobs[f"bad:{case_id}"] = (bad_argv(case_id, d), d)
    started = {name: _start(args, cwd, logs, _safe(name)) for name, (args, cwd) in jobs.items()}

    in_process = {
        # --overwrite between overrides: overrides after options must still count.
        "b": ["train", "a.yaml", A_OVERRIDES[0], "--overwrite", A_OVERRIDES[1], "output_dir=runs/b"],
        "c": ["train", "a.yaml", *A_OVERRIDES, "seed=1", "output_dir=runs/c"],
        **{name: ["train", f"{name}.yaml"] for name in loader_raws()},
        "print_config": ["train", "a.yaml", "--print-config", *A_OVERRIDES, "output_dir=runs/printed"],
    }
    runs = {name: main_in_process(argv, base) for name, argv in in_process.items()}
    runs.update(_finish(started, logs))
    # eval needs run a's params.npz, so it comes last.
    runs["eval_a"] = main_in_process(["eval", "a.yaml", *A_OVERRIDES], base)
    return base, runs


@pytest.fixture(scope="module")
def run_a(cli_runs):
    base, runs = cli_runs
    runs["a"].check()
    return base / "runs" / "a"


# --------------------------------------------------------------------------- 1. a train run's files


RUN_FILES = {"config.yaml", "metrics.jsonl", "params.npz", "summary.json", "status.json", "curves.png"}


def test_train_writes_the_four_run_files(run_a):
    files = {p.name for p in run_a.iterdir() if p.is_file()}
    assert files == RUN_FILES  # (subdirectories, e.g. checkpoints, may sit beside them)
    assert all((run_a / name).stat().st_size > 0 for name in RUN_FILES)
    # No temporary files from the atomic writes are left behind.
    assert not [p for p in run_a.rglob(".*.tmp")]


def test_saved_config_equals_the_overridden_config(cli_runs, run_a):
    base, _ = cli_runs
    expected = cfg.validate(a_expected_raw(), "expected")
    saved = cfg.load_config(run_a / "config.yaml")
    assert saved == expected
    assert saved == cfg.load_config(base / "a.yaml", A_OVERRIDES)
    assert (run_a / "config.yaml").read_text() == cfg.dump_config(expected)


def test_metrics_lines_keys_order_and_values(run_a):
    lines = read_metrics(run_a)
    expected_order = []
    for step in range(1, NUM_STEPS + 1):
        if step % LOG_EVERY == 0 or step == NUM_STEPS:
            expected_order.append((step, "train"))
        if step % EVAL_EVERY == 0 or step == NUM_STEPS:
            expected_order.append((step, "val"))
    expected_order.append((NUM_STEPS, "test"))
    assert [(m["step"], m["split"]) for m in lines] == expected_order
    # log.every_steps=5 over 22 steps: 5, 10, 15, 20 and the final partial window at 22.
    assert [m["step"] for m in lines if m["split"] == "train"] == [5, 10, 15, 20, 22]

    for m in lines:
        if m["split"] == "train":
            assert {"step", "split", "epoch", "loss", "accuracy", "learning_rate"} <= set(m)
            # The gradient norm is computed on log steps, so the final partial window has none.
            assert ("grad_norm" in m) == (m["step"] % LOG_EVERY == 0)
            assert all(isinstance(v, (int, float)) and math.isfinite(v) for k, v in m.items() if k != "split")
            assert m.get("nonfinite_steps", 0) == 0
        else:
            assert set(m) == {"step", "split", "epoch", "loss", "accuracy"}
        assert m["epoch"] == pytest.approx(m["step"] / STEPS_PER_EPOCH, rel=1e-12)
        assert 0.0 <= m["accuracy"] <= 1.0 and math.isfinite(m["loss"]) and m["loss"] > 0

    train = [m for m in lines if m["split"] == "train"]
    prev = 0
    for m in train:
        # Linear decay from the peak to 0 over the run, read at step - 1 (optax counts from 0);
        # optax computes it in float32, hence rel 1e-6.
        assert m["learning_rate"] == pytest.approx(PEAK_LR * (1 - (m["step"] - 1) / NUM_STEPS), rel=1e-6)
        # Train accuracy is the mean over the window's full 64-example batches: k / (64 * window).
        window = m["step"] - prev
        prev = m["step"]
        hits = m["accuracy"] * BATCH * window
        assert hits == pytest.approx(round(hits), abs=1e-3)  # float32 means of k/64 values
        assert m.get("grad_norm", 1.0) > 0
    for m in lines:
        if m["split"] in ("val", "test"):
            # 180 examples in one eval batch of 256: accuracy is k/180 up to float32 rounding.
            hits = m["accuracy"] * DIGITS_VAL
            assert hits == pytest.approx(round(hits), abs=1e-3)
    # 22 adam steps at lr 5e-3 on digits: the loss must come down from ~ln(10).
    assert train[0]["loss"] > train[-1]["loss"]


def test_summary_matches_the_last_metric_lines(run_a):
    lines, summary = read_metrics(run_a), read_summary(run_a)
    last = {}
    for m in lines:
        last[m["split"]] = {k: v for k, v in m.items() if k not in ("step", "split", "epoch")}
    # Both files come from the same Python floats through json: exact equality.
    assert summary["final"] == last
    assert set(summary["final"]) == {"train", "val", "test"}
    assert summary["steps"] == NUM_STEPS
    assert summary["epochs"] == pytest.approx(NUM_STEPS / STEPS_PER_EPOCH, rel=1e-12)
    assert summary["num_params"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert summary["wall_time_s"] > 0 and summary["train_time_s"] > 0
    assert summary["wall_time_s"] >= summary["train_time_s"]
    # 22 full batches of 64 (the epoch's partial batch would be step 23): examples / train time.
    assert summary["examples_per_second"] * summary["train_time_s"] == pytest.approx(NUM_STEPS * BATCH, rel=1e-6)


def test_params_npz_has_the_mlp_shapes(run_a):
    params = read_params(run_a)
    # serial(flatten, dense, relu, dense, relu, dense): parameters at indices 1, 3 and 5.
    assert {k: v.shape for k, v in params.items()} == {
        "params/dense_1/w": (64, 32), "params/dense_1/b": (32,),
        "params/dense_3/w": (32, 16), "params/dense_3/b": (16,),
        "params/dense_5/w": (16, 10), "params/dense_5/b": (10,),
    }
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in params.values())
    assert sum(v.size for v in params.values()) == read_summary(run_a)["num_params"]


def test_saved_params_reproduce_the_final_val_metrics(run_a, monkeypatch):
    """A numpy forward pass of params.npz on the val split gives summary.json's val metrics."""
    from fntrain.loop import build_experiment

    monkeypatch.chdir(run_a.parent.parent)
    config = cfg.load_config(run_a / "config.yaml")
    val = build_experiment(config).splits.val
    p = {k: v.astype(np.float64) for k, v in read_params(run_a).items()}
    h = val.x.reshape(len(val.x), -1).astype(np.float64)
    h = np.maximum(h @ p["params/dense_1/w"] + p["params/dense_1/b"], 0)
    h = np.maximum(h @ p["params/dense_3/w"] + p["params/dense_3/b"], 0)
    logits = h @ p["params/dense_5/w"] + p["params/dense_5/b"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(val.y)), val.y].mean()
    accuracy = (logits.argmax(axis=1) == val.y).mean()
    final = read_summary(run_a)["final"]["val"]
    assert len(val.y) == DIGITS_VAL
    assert final["accuracy"] == pytest.approx(accuracy, abs=1e-6)  # k/180 in float32 vs exact
    assert final["loss"] == pytest.approx(loss, rel=1e-5)  # float32 network vs float64 numpy


# --------------------------------------------------------------------------- 2. determinism


def test_same_seed_gives_identical_runs(cli_runs, run_a):
    base, runs = cli_runs
    run_b = base / "runs" / "b"
    runs["b"].check()
    assert read_metrics(run_b) == read_metrics(run_a)  # every line, every key, bit for bit
    pa, pb = read_params(run_a), read_params(run_b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert cfg.load_config(run_b / "config.yaml") == cfg.load_config(run_a / "config.yaml").model_copy(
        update={"output_dir": "runs/b"}
    )


def test_different_seed_gives_different_runs(cli_runs, run_a):
    base, runs = cli_runs
    run_c = base / "runs" / "c"
    runs["c"].check()
    la, lc = read_metrics(run_a), read_metrics(run_c)
    assert [(m["step"], m["split"]) for m in la] == [(m["step"], m["split"]) for m in lc]
    for ma, mc in zip(la, lc):
        assert ma["loss"] != mc["loss"], (ma, mc)
    pa, pc = read_params(run_a), read_params(run_c)
    assert all(not np.array_equal(pa[k], pc[k]) for k in pa if k.endswith("/w"))
    assert cfg.load_config(run_c / "config.yaml").seed == 1


def test_overwrite_replaces_a_run_and_reproduces_it(cli_runs, run_a, capsys, monkeypatch):
    """``--overwrite`` into a copy of run a: the same numbers, not appended to the old log."""
    base, _ = cli_runs
    monkeypatch.chdir(base)
    monkeypatch.setattr(sys, "path", list(sys.path))
    copy_dir = base / "runs" / "a_copy"
    shutil.copytree(run_a, copy_dir)
    rc, out, err = run_main(["train", "a.yaml", "--overwrite", *A_OVERRIDES, "output_dir=runs/a_copy"], capsys)
    assert rc == 0, err
    assert read_metrics(copy_dir) == read_metrics(run_a)
    assert read_summary(copy_dir)["final"] == read_summary(run_a)["final"]
    assert "final val:" in out


def test_existing_output_dir_without_overwrite_is_refused_untouched(cli_runs, run_a, capsys, monkeypatch):
    base, _ = cli_runs
    monkeypatch.chdir(base)
    monkeypatch.setattr(sys, "path", list(sys.path))
    def snapshot():
        return {str(p.relative_to(run_a)): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_a.rglob("*") if p.is_file()}

    before = snapshot()
    rc, out, err = run_main(["train", "a.yaml", *A_OVERRIDES], capsys)
    assert_one_error_line(rc, err, ("runs/a", "--overwrite"))
    assert out == ""
    assert snapshot() == before


# --------------------------------------------------------------------------- 3. eval


def test_eval_reproduces_the_final_val_and_test_metrics(cli_runs, run_a):
    base, runs = cli_runs
    results = json.loads(runs["eval_a"].check().stdout)
    final = read_summary(run_a)["final"]
    assert set(results) == {"val", "test"}
    for split in ("val", "test"):
        assert results[split].keys() == final[split].keys()
        for k, v in results[split].items():
            # Same params, same batches, same jitted code: equal up to float printing.
            assert v == pytest.approx(final[split][k], abs=1e-6), (split, k)


def test_eval_restores_batch_norm_state(cli_runs, capsys, monkeypatch):
    """The idx run's MLP has batch norm: eval must load model_state too to match its summary."""
    base, runs = cli_runs
    runs["idx"].check()
    monkeypatch.chdir(base)
    monkeypatch.setattr(sys, "path", list(sys.path))
    rc, out, err = run_main(["eval", "idx.yaml"], capsys)
    assert rc == 0, err
    results, final = json.loads(out), read_summary(base / "runs" / "idx")["final"]
    for split in ("val", "test"):
        for k, v in results[split].items():
            assert v == pytest.approx(final[split][k], abs=1e-6), (split, k)


def test_eval_without_a_trained_run_is_an_error(in_dir, capsys):
    write_yaml(in_dir / "never.yaml", bad_base())
    rc, out, err = run_main(["eval", "never.yaml"], capsys)
    assert_one_error_line(rc, err, ("params.npz", "does not exist"))
    assert not (in_dir / "out").exists()


# --------------------------------------------------------------------------- 4. overrides


@pytest.mark.parametrize(
    "override, key, value",
    [
        pytest.param("optimizer.learning_rate=3e-4", "optimizer.learning_rate", 3e-4, id="learning-rate-float"),
        pytest.param("model.hidden_sizes=[256,256]", "model.hidden_sizes", [256, 256], id="hidden-sizes-int-list"),
        pytest.param("data.batch_size=32", "data.batch_size", 32, id="batch-size-int"),
        pytest.param("loop.num_steps=7", "loop.num_steps", 7, id="num-steps-int"),
        pytest.param("optimizer.clip_grad_norm=1", "optimizer.clip_grad_norm", 1.0, id="int-into-float-field"),
        pytest.param("model.norm=null", "model.norm", None, id="null-resets-to-none"),
        pytest.param("data.standardize=yes", "data.standardize", True, id="yaml-1.1-bool"),
        pytest.param("output_dir=runs/x=y", "output_dir", "runs/x=y", id="value-with-equals"),
        pytest.param("optimizer.schedule.name=cosine", "optimizer.schedule.name", "cosine", id="nested-section"),
        pytest.param("log.every_steps=3", "log.every_steps", 3, id="creates-missing-section"),
    ],
)
def test_an_override_changes_exactly_its_key(in_dir, override, key, value):
    raw = digits_raw("runs/o")
    raw["model"]["norm"] = "layer"
    del raw["log"]
    path = write_yaml(in_dir / "o.yaml", raw)
    plain = flatten(cfg.config_to_dict(cfg.load_config(path)))
    changed = flatten(cfg.config_to_dict(cfg.load_config(path, [override])))
    assert {k for k in plain if plain[k] != changed[k]} == {key}
    assert changed[key] == value and type(changed[key]) is type(value)
    if isinstance(value, list):
        assert all(type(v) is int for v in changed[key])


def test_several_overrides_change_exactly_those_keys(in_dir):
    path = write_yaml(in_dir / "o.yaml", digits_raw("runs/o"))
    overrides = ["optimizer.learning_rate=3e-4", "model.hidden_sizes=[256,256]", "data.batch_size=32", "loop.num_steps=7"]
    plain = flatten(cfg.config_to_dict(cfg.load_config(path)))
    changed = flatten(cfg.config_to_dict(cfg.load_config(path, overrides)))
    assert {k: changed[k] for k in plain if plain[k] != changed[k]} == {
        "optimizer.learning_rate": 3e-4,
        "model.hidden_sizes": [256, 256],
        "data.batch_size": 32,
        "loop.num_steps": 7,
    }
    assert type(changed["optimizer.learning_rate"]) is float
    # The last of two overrides of one key wins.
    assert cfg.load_config(path, ["loop.num_steps=7", "loop.num_steps=9"]).loop.num_steps == 9


def test_print_config_prints_the_resolved_yaml_and_writes_nothing(cli_runs):
    base, runs = cli_runs
    run = runs["print_config"].check()
    expected = cfg.load_config(base / "a.yaml", [*A_OVERRIDES, "output_dir=runs/printed"])
    assert cfg.validate(cfg.parse_yaml(run.stdout, "stdout"), "stdout") == expected
    assert run.stdout == cfg.dump_config(expected)
    assert not (base / "runs" / "printed").exists()
    assert "error" not in run.stderr.lower()


def test_eval_print_config(in_dir, capsys):
    path = write_yaml(in_dir / "p.yaml", digits_raw("runs/p"))
    rc, out, err = run_main(["eval", "p.yaml", "--print-config", "seed=5"], capsys)
    assert rc == 0 and err == ""
    assert cfg.validate(cfg.parse_yaml(out, "stdout"), "stdout") == cfg.load_config(path, ["seed=5"])
    assert not (in_dir / "runs").exists()


def test_output_dir_null_defaults_to_runs_slash_file_stem(in_dir):
    raw = digits_raw(None)
    path = write_yaml(in_dir / "my_experiment.yaml", raw)
    assert cfg.load_config(path).output_dir == str(Path("runs") / "my_experiment")


# --------------------------------------------------------------------------- 5. every documented key


def _config_modules():
    import importlib
    import pkgutil

    return [importlib.import_module(f"{cfg.__name__}.{m.name}") for m in pkgutil.iter_modules(cfg.__path__)]


# Every public pydantic class defined in a module of the fntrain.config package.
SECTION_CLASSES = {
    name: obj
    for module in _config_modules()
    for name, obj in vars(module).items()
    if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__ and not name.startswith("_")
}

_DATA_COMMON = {"val_fraction": 0.2, "test_fraction": 0.15, "standardize": True, "standardize_targets": True,
                "batch_size": 16, "eval_batch_size": 32, "shuffle": False, "drop_last": True, "on_device": False,
                "prefetch": 0}
_OPTIMIZER_COMMON = {"learning_rate": 3e-4, "weight_decay": 0.01, "clip_grad_norm": 1.0, "schedule": "<schedule>",
                     "accumulate_steps": 2, "groups": ["<ParamGroupConfig>"], "reduce_on_plateau": "<PlateauConfig>",
                     "ema_decay": 0.99, "ema_warmup": True, "ema_eval": "raw"}


def non_default_sections(files: Path) -> dict[str, dict]:
    """Every field of every section class, set to a valid value other than its default."""
    return {
        "DigitsData": {"name": "digits", **_DATA_COMMON},
        "ClassificationData": {"name": "classification", **_DATA_COMMON, "num_examples": 120, "num_features": 5,
                               "num_classes": 4, "class_sep": 3.0},
        "RegressionData": {"name": "regression", **_DATA_COMMON, "num_examples": 120, "num_features": 5,
                           "num_outputs": 2, "noise": 0.5},
        "NpzData": {"name": "npz", **_DATA_COMMON, "path": str(files / "d.npz"), "x_key": "inputs", "y_key": "labels"},
        "NpyData": {"name": "npy", **_DATA_COMMON, "x_path": str(files / "x.npy"), "y_path": str(files / "y.npy"),
                    "val_x_path": str(files / "val_x.npy"), "val_y_path": str(files / "val_y.npy"),
                    "test_x_path": str(files / "test_x.npy"), "test_y_path": str(files / "test_y.npy")},
        "IdxData": {"name": "idx", **_DATA_COMMON, "images_path": str(files / "images.idx"),
                    "labels_path": str(files / "labels.idx.gz"), "val_images_path": str(files / "val_images.idx"),
                    "val_labels_path": str(files / "val_labels.idx"), "test_images_path": str(files / "test_images.idx"),
                    "test_labels_path": str(files / "test_labels.idx")},
        "CsvData": {"name": "csv", **_DATA_COMMON, "path": str(files / "d.csv"), "val_path": str(files / "d_val.csv"),
                    "test_path": str(files / "d_test.csv"), "target_column": "label", "target_dtype": "float",
                    "header": True, "delimiter": ";"},
        "CharLMData": {"name": "charlm", "val_fraction": 0.2, "batch_size": 16, "eval_batch_size": 32, "shuffle": False,
                       "drop_last": True, "on_device": False, "prefetch": 0, "seq_len": 16, "stride": 8,
                       "max_chars": 4000},
        "SequenceOrderData": {"name": "sequence_order", **_DATA_COMMON, "num_examples": 120, "seq_len": 8,
                              "target": "gap"},
        "CustomData": {"name": "fntrain.data:make_classification", **_DATA_COMMON,
                       "kwargs": {"num_examples": 120, "num_features": 5}, "module_dir": str(files)},
        "MlpModel": {"name": "mlp", "hidden_sizes": [16, 8], "num_outputs": 4, "activation": "gelu",
                     "dropout_rate": 0.1, "norm": "layer"},
        "CnnModel": {"name": "cnn", "channels": [4], "kernel_size": [5, 3], "strides": [1, 2], "pool": "avg",
                     "pool_size": [2, 1], "hidden_sizes": [8], "num_outputs": 10, "activation": "tanh",
                     "dropout_rate": 0.2, "norm": "batch"},
        "Cnn1dModel": {"name": "cnn1d", "channels": [4], "kernel_size": 3, "strides": 2, "pool": "avg", "pool_size": 3,
                       "hidden_sizes": [8], "num_outputs": 10, "activation": "tanh", "dropout_rate": 0.2, "norm": "batch"},
        "RnnModel": {"name": "rnn", "cell": "lstm", "hidden_size": 8, "num_layers": 2, "num_outputs": 10,
                     "dropout_rate": 0.1},
        "ResnetModel": {"name": "resnet", "stage_sizes": [1, 1, 1], "num_filters": 8, "num_outputs": 10},
        "TransformerLmModel": {"name": "transformer_lm", "vocab_size": 120, "seq_len": 64, "d_model": 32,
                               "num_layers": 3, "num_heads": 2, "mlp_dim": 64, "dropout_rate": 0.1,
                               "position": "sinusoidal"},
        "CustomModel": {"name": "fntrain.nn:mlp", "kwargs": {"hidden_sizes": [8]}, "module_dir": str(files)},
        "SoftmaxCrossEntropyLoss": {"name": "softmax_cross_entropy", "label_smoothing": 0.1},
        "SigmoidBinaryCrossEntropyLoss": {"name": "sigmoid_binary_cross_entropy"},
        "MeanSquaredErrorLoss": {"name": "mse"},
        "HuberLoss": {"name": "huber", "delta": 2.0},
        "CustomLoss": {"name": "fntrain.losses:huber", "kwargs": {"delta": 0.5}, "module_dir": str(files)},
        "ConstantSchedule": {"name": "constant"},
        "CosineSchedule": {"name": "cosine", "decay_steps": 100, "end_value": 1e-5},
        "WarmupCosineSchedule": {"name": "warmup_cosine", "warmup_steps": 5, "decay_steps": 100, "end_value": 1e-5},
        "LinearSchedule": {"name": "linear", "decay_steps": 100, "end_value": 1e-5},
        "PiecewiseSchedule": {"name": "piecewise", "boundaries": [10, 20], "scales": [0.5, 0.1]},
        "ExponentialSchedule": {"name": "exponential", "decay_rate": 0.9, "transition_steps": 50, "end_value": 1e-5},
        "WarmupConstantSchedule": {"name": "warmup_constant", "warmup_steps": 5},
        "WarmupStableDecaySchedule": {"name": "warmup_stable_decay", "warmup_steps": 5, "decay_steps": 50,
                                      "decay_fraction": 0.5, "decay_shape": "sqrt", "end_value": 1e-5},
        # weight_decay 0.0 (not null) so that adam accepts the group too.
        "ParamGroupConfig": {"match": "^dense_1/", "learning_rate_scale": 0.5, "weight_decay": 0.0, "frozen": False},
        "PlateauConfig": {"metric": "accuracy", "mode": "max", "factor": 0.5, "patience": 3, "rtol": 0.01,
                          "atol": 0.001, "cooldown": 2, "min_scale": 0.01},
        "SgdOptimizer": {"name": "sgd", **_OPTIMIZER_COMMON},
        "MomentumOptimizer": {"name": "momentum", **_OPTIMIZER_COMMON, "momentum": 0.5},
        "NesterovOptimizer": {"name": "nesterov", **_OPTIMIZER_COMMON, "momentum": 0.5},
        # adam takes no weight decay: 0.0, its default, is the one value it accepts (see DEFAULT_ONLY).
        "AdamOptimizer": {"name": "adam", **_OPTIMIZER_COMMON, "weight_decay": 0.0, "b1": 0.8, "b2": 0.99, "eps": 1e-6},
        "AdamwOptimizer": {"name": "adamw", **_OPTIMIZER_COMMON, "b1": 0.8, "b2": 0.99, "eps": 1e-6},
        "RmspropOptimizer": {"name": "rmsprop", **_OPTIMIZER_COMMON, "decay": 0.8, "eps": 1e-6, "momentum": 0.5},
        "OptaxOptimizer": {"name": "optax:lion", **_OPTIMIZER_COMMON, "kwargs": {"b1": 0.8}},
        "ObjectiveConfig": {"name": "fntrain.step:supervised_loss", "kwargs": {"metric_fns": {}},
                            "module_dir": str(files)},
        "CallbackConfig": {"name": "fntrain.metrics:top_k_accuracy", "kwargs": {"k": 3}, "module_dir": str(files)},
        "PopulationConfig": {"size": 2, "grid": {"optimizer.learning_rate": [1e-3, 2e-3], "optimizer.b1": [0.8, 0.9]}},
        "LoopConfig": {"kind": "steps", "num_epochs": 3, "num_steps": 10, "eval_every_epochs": 2, "eval_every_steps": 5,
                       "steps_per_dispatch": 4, "on_nonfinite": "skip"},
        "LogConfig": {"every_steps": 3, "grad_norm": True, "progress": "lines", "layer_stats": True, "tensorboard": False,
                      "plot": False},
        "CheckpointConfig": {"every_steps": 10, "every_minutes": 0.5, "keep": 2, "keep_best": True, "resume": True},
        "EarlyStoppingConfig": {"metric": "accuracy", "mode": "max", "patience": 3, "min_delta": 0.01,
                                "restore_best": False},
        "ParallelConfig": {"mode": "fsdp", "num_devices": 2, "distributed": True, "coordinator_address": "10.0.0.1:1234",
                           "num_processes": 2, "process_id": 1},
        "Config": {"seed": 7, "output_dir": "runs/all", "precision": "bfloat16", "data": "<data>", "model": "<model>",
                   "loss": "<loss>", "objective": "<ObjectiveConfig>", "metrics": ["accuracy", "top_5_accuracy"],
                   "metrics_module_dir": str(files),
                   "optimizer": "<optimizer>", "loop": "<LoopConfig>", "log": "<LogConfig>",
                   "checkpoint": "<CheckpointConfig>", "early_stopping": "<EarlyStoppingConfig>",
                   "parallel": "<ParallelConfig>", "population": "<PopulationConfig>",
                   "callbacks": ["<CallbackConfig>", "<CallbackConfig>"]},
    }


# Fields whose only valid value is their default, so the table cannot set them otherwise.
# frozen: true excludes the group's other keys (tests/test_optim.py covers frozen groups).
DEFAULT_ONLY = {("AdamOptimizer", "weight_decay"), ("ParamGroupConfig", "frozen")}
# An objective excludes a loss section and metrics, so full_config leaves it out and
# test_every_field_of_the_objective_is_accepted covers it; a population trains otherwise than the
# configs the other tests train, so test_every_field_of_the_population_is_accepted covers it.
NOT_IN_FULL_CONFIG = {"objective", "population"}


DATA_CLASSES = (
    "DigitsData", "ClassificationData", "RegressionData", "SequenceOrderData", "NpzData", "NpyData", "IdxData", "CsvData",
    "CharLMData", "CustomData",
)
# Sources whose every split comes from its own files in the table above: (val, test) rows.
FIXED_SPLIT_ROWS = {"NpyData": (30, 20), "IdxData": (30, 20), "CsvData": (30, 20)}
MODEL_CLASSES = ("MlpModel", "CnnModel", "Cnn1dModel", "RnnModel", "ResnetModel", "TransformerLmModel", "CustomModel")
LOSS_CLASSES = ("SoftmaxCrossEntropyLoss", "SigmoidBinaryCrossEntropyLoss", "MeanSquaredErrorLoss", "HuberLoss", "CustomLoss")
OPTIMIZER_CLASSES = ("SgdOptimizer", "MomentumOptimizer", "NesterovOptimizer", "AdamOptimizer", "AdamwOptimizer", "RmspropOptimizer",
                     "OptaxOptimizer")
SCHEDULE_CLASSES = ("ConstantSchedule", "CosineSchedule", "WarmupCosineSchedule", "LinearSchedule", "PiecewiseSchedule",
                    "ExponentialSchedule", "WarmupConstantSchedule", "WarmupStableDecaySchedule")


def full_config(files: Path, data: str, model: str, loss: str = "CustomLoss", optimizer: str = "AdamwOptimizer",
                schedule: str = "PiecewiseSchedule") -> dict:
    """A Config dict with every field of every section set; ``<Class>`` placeholders filled in."""
    s = non_default_sections(files)
    chosen = {"<data>": data, "<model>": model, "<loss>": loss, "<optimizer>": optimizer, "<schedule>": schedule}

    def fill(value):
        if isinstance(value, str) and value.startswith("<"):
            return fill(s[chosen.get(value, value.strip("<>"))])
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return copy.deepcopy({k: fill(v) for k, v in s["Config"].items() if k not in NOT_IN_FULL_CONFIG})


def section_values(files: Path, data: str, model: str, **variants: str) -> dict[str, dict]:
    """``{"optimizer": {...}, ...}``: what each top-level section of ``full_config`` holds."""
    return {k: v for k, v in full_config(files, data, model, **variants).items() if isinstance(v, dict)}


def write_data_files(d: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(d / "d.npz", inputs=rng.normal(size=(120, 5)).astype(np.float32), labels=np.arange(120) % 3)
    for prefix, n in (("", 120), ("val_", 30), ("test_", 20)):
        np.save(d / f"{prefix}x.npy", rng.normal(size=(n, 5)).astype(np.float32))
        np.save(d / f"{prefix}y.npy", (np.arange(n) % 3).astype(np.int64))
        images = "images.idx" if not prefix else f"{prefix}images.idx"
        labels = "labels.idx.gz" if not prefix else f"{prefix}labels.idx"
        write_idx(d / images, rng.integers(0, 256, size=(n, 8, 8)).astype(np.uint8), gz=False)
        write_idx(d / labels, (np.arange(n) % 10).astype(np.uint8), gz=not prefix)
        rows = ["a;label;b"] + [f"{a:.4f};{a - b:.4f};{b:.4f}" for a, b in rng.normal(size=(n, 2))]
        (d / f"d{'_' + prefix[:-1] if prefix else ''}.csv").write_text("\n".join(rows) + "\n")


def assert_section_holds(section: BaseModel, values: dict, where: str) -> None:
    for name, value in values.items():
        got = getattr(section, name)
        if isinstance(value, dict) and name == "kwargs":
            assert section.kwargs_dict == value, f"{where}.{name}"
        elif isinstance(value, dict):
            assert_section_holds(got, value, f"{where}.{name}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):  # a list of sections
            assert len(got) == len(value), f"{where}.{name}"
            for i, (section_i, values_i) in enumerate(zip(got, value)):
                assert_section_holds(section_i, values_i, f"{where}.{name}[{i}]")
        elif isinstance(value, list):
            assert got == tuple(value), f"{where}.{name}"
        else:
            assert got == value and type(got) is type(value), f"{where}.{name}: {got!r} != {value!r}"


def test_the_field_table_covers_every_section_class_and_field(tmp_path):
    """Adding a class or field to the fntrain/config/ package without covering it here fails this test."""
    table = non_default_sections(tmp_path)
    assert set(table) == set(SECTION_CLASSES)
    for name, values in table.items():
        cls = SECTION_CLASSES[name]
        assert set(values) == set(cls.model_fields), name
        for field, value in values.items():
            info = cls.model_fields[field]
            if not info.is_required() and (name, field) not in DEFAULT_ONLY:
                assert value != info.get_default(call_default_factory=True), f"{name}.{field} is set to its default"


@pytest.mark.parametrize("data", DATA_CLASSES)
def test_every_field_of_every_data_variant_is_accepted_and_used(tmp_path, data):
    from fntrain import builders

    import jax

    write_data_files(tmp_path)
    raw = full_config(tmp_path, data, "MlpModel")
    config = cfg.validate(raw, "all_fields.yaml")
    for key, values in section_values(tmp_path, data, "MlpModel").items():
        assert_section_holds(getattr(config, key), values, key)
    assert (config.seed, config.output_dir, config.precision) == (7, "runs/all", "bfloat16")
    assert config.metrics == ("accuracy", "top_5_accuracy")
    for callback in config.callbacks:
        assert_section_holds(callback, non_default_sections(tmp_path)["CallbackConfig"], "callbacks[]")
    # Round trips: the plain dict and its YAML text validate back to the same config.
    assert cfg.validate(cfg.config_to_dict(config), "roundtrip") == config
    assert cfg.validate(cfg.parse_yaml(cfg.dump_config(config), "dump"), "dump") == config

    # The file-based fields are read: non-default keys, delimiter, header and target column.
    splits = builders.build_data(config.data, seed=config.seed, key=jax.random.key(0))
    if data == "CharLMData":
        # 4000 characters, the last 20% held out, windows of 16 every 8 characters.
        assert splits.test is None and splits.train.x.shape == ((3200 - 17) // 8 + 1, 16)
        assert splits.val.x.shape == ((800 - 17) // 8 + 1, 16)
        return
    n = 1797 if data == "DigitsData" else 120
    n_val, n_test = round(0.2 * n), round(0.15 * n)
    if data in FIXED_SPLIT_ROWS:  # the files' own splits; the fractions apply to none
        (n_val, n_test), n = FIXED_SPLIT_ROWS[data], n + sum(FIXED_SPLIT_ROWS[data])
    assert (len(splits.val.y), len(splits.test.y), len(splits.train.y)) == (n_val, n_test, n - n_val - n_test)
    if data == "CsvData":
        assert splits.train.x.shape[1:] == (2,) and splits.train.y.shape[1:] == (1,)
        assert splits.train.y.dtype == np.float32
        # The file's middle column "label" is a - b: without standardizing, y must equal x0 - x1
        # (each value was written with 4 decimals, so the difference is good to ~1.5e-4).
        plain = builders.build_data(config.data.model_copy(update={"standardize": False}), seed=0, key=jax.random.key(0))
        np.testing.assert_allclose(plain.train.y[:, 0], plain.train.x[:, 0] - plain.train.x[:, 1], atol=2e-4)
    if data == "NpzData":
        assert splits.train.x.shape[1:] == (5,) and splits.train.y.ndim == 1
    if data == "IdxData":
        assert splits.train.x.shape[1:] == (8, 8, 1)
    if data == "NpyData":  # read a batch at a time: the splits are views of the files
        from fntrain.data import is_lazy

        assert is_lazy(splits.train.x) and is_lazy(splits.val.x) and splits.train.x.shape[1:] == (5,)
    # standardize: true -> training features have mean 0 (float32 over <= 1258 rows: 1e-4).
    train_x = np.asarray(splits.train.x)
    assert np.abs(train_x.reshape(len(train_x), -1).mean(axis=0)).max() < 1e-4


@pytest.mark.parametrize("model", MODEL_CLASSES)
def test_every_field_of_every_model_variant_is_accepted(tmp_path, model):
    config = cfg.validate(full_config(tmp_path, "DigitsData", model), "all_fields.yaml")
    assert_section_holds(config.model, non_default_sections(tmp_path)[model], "model")
    assert cfg.validate(cfg.config_to_dict(config), "roundtrip") == config


@pytest.mark.parametrize("loss", LOSS_CLASSES)
def test_every_field_of_every_loss_variant_is_accepted(tmp_path, loss):
    config = cfg.validate(full_config(tmp_path, "DigitsData", "MlpModel", loss=loss), "all_fields.yaml")
    assert type(config.loss) is SECTION_CLASSES[loss]
    assert_section_holds(config.loss, non_default_sections(tmp_path)[loss], "loss")
    assert cfg.validate(cfg.config_to_dict(config), "roundtrip") == config
    assert callable(config.loss.build())


@pytest.mark.parametrize("optimizer", OPTIMIZER_CLASSES)
@pytest.mark.parametrize("schedule", SCHEDULE_CLASSES)
def test_every_field_of_every_optimizer_and_schedule_variant_is_accepted(tmp_path, optimizer, schedule):
    from fntrain import builders

    import jax.numpy as jnp

    raw = full_config(tmp_path, "DigitsData", "MlpModel", optimizer=optimizer, schedule=schedule)
    config = cfg.validate(raw, "all_fields.yaml")
    assert type(config.optimizer) is SECTION_CLASSES[optimizer]
    assert type(config.optimizer.schedule) is SECTION_CLASSES[schedule]
    assert_section_holds(config.optimizer, raw["optimizer"], "optimizer")
    assert cfg.validate(cfg.config_to_dict(config), "roundtrip") == config
    tx, fn = builders.build_optimizer(config.optimizer, 200)
    params = {"w": jnp.ones((2, 2))}
    updates, _ = tx.update({"w": jnp.ones((2, 2))}, tx.init(params), params)
    assert float(fn(0)) >= 0 and bool(jnp.all(jnp.isfinite(updates["w"])))


def test_every_field_of_the_objective_is_accepted(tmp_path):
    raw = full_config(tmp_path, "DigitsData", "MlpModel")
    del raw["loss"], raw["metrics"]  # an objective takes their place
    raw["objective"] = non_default_sections(tmp_path)["ObjectiveConfig"]
    config = cfg.validate(raw, "all_fields.yaml")
    assert_section_holds(config.objective, raw["objective"], "objective")
    assert cfg.validate(cfg.config_to_dict(config), "roundtrip") == config


def test_every_field_of_the_population_is_accepted(tmp_path):
    raw = full_config(tmp_path, "DigitsData", "MlpModel")
    raw["population"] = non_default_sections(tmp_path)["PopulationConfig"]
    config = cfg.validate(raw, "all_fields.yaml")
    assert config.population.size == 2
    assert config.population.grid == {"optimizer.learning_rate": (1e-3, 2e-3), "optimizer.b1": (0.8, 0.9)}
    assert config.population.num_members() == 8
    assert cfg.validate(cfg.config_to_dict(config), "roundtrip") == config


def _literal_choices(annotation) -> list:
    """The values a Literal (possibly inside Optional/Annotated) admits; None if Optional."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    if origin is typing.Annotated:
        return _literal_choices(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        inner = [c for a in args if a is not type(None) for c in _literal_choices(a)]
        return inner + [None] if inner and type(None) in args else inner
    return []


MINIMAL_SECTIONS = {
    "DigitsData": ("data", {"name": "digits"}),
    "ClassificationData": ("data", {"name": "classification"}),
    "RegressionData": ("data", {"name": "regression"}),
    "NpzData": ("data", {"name": "npz", "path": "x.npz"}),
    "NpyData": ("data", {"name": "npy", "x_path": "x.npy", "y_path": "y.npy"}),
    "IdxData": ("data", {"name": "idx", "images_path": "i", "labels_path": "l"}),
    "CsvData": ("data", {"name": "csv", "path": "x.csv"}),
    "CustomData": ("data", {"name": "fntrain.data:make_classification"}),
    "MlpModel": ("model", {"name": "mlp"}),
    "CnnModel": ("model", {"name": "cnn"}),
    "Cnn1dModel": ("model", {"name": "cnn1d"}),
    "RnnModel": ("model", {"name": "rnn"}),
    "SequenceOrderData": ("data", {"name": "sequence_order"}),
    "ResnetModel": ("model", {"name": "resnet"}),
    "TransformerLmModel": ("model", {"name": "transformer_lm"}),
    "CharLMData": ("data", {"name": "charlm"}),
    "CustomModel": ("model", {"name": "fntrain.nn:mlp"}),
    "SoftmaxCrossEntropyLoss": ("loss", {"name": "softmax_cross_entropy"}),
    "SigmoidBinaryCrossEntropyLoss": ("loss", {"name": "sigmoid_binary_cross_entropy"}),
    "MeanSquaredErrorLoss": ("loss", {"name": "mean_squared_error"}),
    "HuberLoss": ("loss", {"name": "huber"}),
    "CustomLoss": ("loss", {"name": "fntrain.losses:huber"}),
    "ConstantSchedule": ("optimizer.schedule", {"name": "constant"}),
    "CosineSchedule": ("optimizer.schedule", {"name": "cosine"}),
    "WarmupCosineSchedule": ("optimizer.schedule", {"name": "warmup_cosine"}),
    "LinearSchedule": ("optimizer.schedule", {"name": "linear"}),
    "PiecewiseSchedule": ("optimizer.schedule", {"name": "piecewise"}),
    "ExponentialSchedule": ("optimizer.schedule", {"name": "exponential"}),
    # ema_decay: so that ema_eval may be "ema".
    "SgdOptimizer": ("optimizer", {"name": "sgd", "ema_decay": 0.9}),
    "MomentumOptimizer": ("optimizer", {"name": "momentum", "ema_decay": 0.9}),
    "NesterovOptimizer": ("optimizer", {"name": "nesterov", "ema_decay": 0.9}),
    "AdamOptimizer": ("optimizer", {"name": "adam", "ema_decay": 0.9}),
    "AdamwOptimizer": ("optimizer", {"name": "adamw", "ema_decay": 0.9}),
    "RmspropOptimizer": ("optimizer", {"name": "rmsprop", "ema_decay": 0.9}),
    "OptaxOptimizer": ("optimizer", {"name": "optax:lion", "ema_decay": 0.9}),
    "WarmupConstantSchedule": ("optimizer.schedule", {"name": "warmup_constant"}),
    "WarmupStableDecaySchedule": ("optimizer.schedule", {"name": "warmup_stable_decay"}),
    "ParamGroupConfig": ("optimizer.groups", {"match": "x"}),  # no Literal fields: never set
    "PlateauConfig": ("optimizer.reduce_on_plateau", {}),
    "ObjectiveConfig": ("objective", {"name": "fntrain.step:supervised_loss"}),  # no Literal fields: never set
    "CallbackConfig": ("callbacks", {"name": "fntrain.metrics:accuracy"}),  # no Literal fields: never set
    "PopulationConfig": ("population", {}),  # no Literal fields: never set
    "LoopConfig": ("loop", {"kind": "steps", "num_steps": 5, "num_epochs": 1}),
    "LogConfig": ("log", {}),
    "CheckpointConfig": ("checkpoint", {}),
    "EarlyStoppingConfig": ("early_stopping", {}),
    "ParallelConfig": ("parallel", {}),
    "Config": ("", {}),
}
LITERAL_CHOICES = [
    pytest.param(cls_name, field, choice, id=f"{cls_name}.{field}={choice}")
    for cls_name, cls in SECTION_CLASSES.items()
    for field, info in cls.model_fields.items()
    for choice in _literal_choices(info.annotation)
]


def test_literal_table_is_complete():
    assert set(MINIMAL_SECTIONS) == set(SECTION_CLASSES)
    assert len(LITERAL_CHOICES) > 30  # activations and norms of both models, optimizers, schedules, ...


@pytest.mark.parametrize("cls_name, field, choice", LITERAL_CHOICES)
def test_every_documented_choice_is_accepted(cls_name, field, choice):
    where, section = MINIMAL_SECTIONS[cls_name]
    raw = {"output_dir": "o", "data": {"name": "digits"}, "model": {"name": "mlp"},
           "loop": {"kind": "steps", "num_steps": 5}}
    if where:
        set_dotted(raw, where, {**section, field: choice})
    else:
        raw[field] = choice
    config = cfg.validate(raw, "choices.yaml")
    node = config
    for part in where.split(".") if where else ():
        node = getattr(node, part)
    assert type(node) is SECTION_CLASSES[cls_name]
    assert getattr(node, field) == choice


LR, TOTAL = 0.1, 100
_HALF_COSINE = 0.5 * (1 + math.cos(math.pi / 2))  # 0.5: halfway through a cosine decay


@pytest.mark.parametrize(
    "schedule, expected",
    [
        pytest.param({"name": "constant"}, {0: LR, 50: LR, 99: LR}, id="constant"),
        pytest.param({"name": "cosine", "decay_steps": 50, "end_value": 0.01},
                     {0: LR, 25: 0.01 + (LR - 0.01) * _HALF_COSINE, 50: 0.01, 80: 0.01}, id="cosine"),
        pytest.param({"name": "warmup_cosine", "warmup_steps": 10, "decay_steps": 60, "end_value": 0.01},
                     {0: 0.0, 5: LR / 2, 10: LR, 35: 0.01 + (LR - 0.01) * _HALF_COSINE, 60: 0.01}, id="warmup_cosine"),
        pytest.param({"name": "linear"}, {0: LR, 25: 0.75 * LR, 100: 0.0}, id="linear-over-the-whole-run"),
        pytest.param({"name": "piecewise", "boundaries": [10, 20], "scales": [0.5, 0.1]},
                     {5: LR, 15: LR * 0.5, 25: LR * 0.05}, id="piecewise"),
        pytest.param({"name": "exponential", "transition_steps": 10, "decay_rate": 0.5},
                     {0: LR, 10: LR / 2, 20: LR / 4}, id="exponential"),
        pytest.param({"name": "exponential", "transition_steps": 10, "decay_rate": 0.5, "end_value": 0.02},
                     {10: LR / 2, 30: 0.02, 90: 0.02}, id="exponential-floor"),
        pytest.param({"name": "warmup_constant", "warmup_steps": 10}, {0: 0.0, 5: LR / 2, 10: LR, 99: LR},
                     id="warmup_constant"),
        pytest.param({"name": "warmup_stable_decay", "warmup_steps": 10, "decay_steps": 20, "end_value": 0.01},
                     {0: 0.0, 5: LR / 2, 10: LR, 80: LR, 90: 0.01 + (LR - 0.01) / 2, 100: 0.01}, id="wsd-linear"),
        pytest.param({"name": "warmup_stable_decay", "decay_steps": 20, "decay_shape": "cosine", "end_value": 0.01},
                     {0: LR, 80: LR, 90: 0.01 + (LR - 0.01) * _HALF_COSINE, 100: 0.01}, id="wsd-cosine"),
        pytest.param({"name": "warmup_stable_decay", "decay_fraction": 0.5, "decay_shape": "sqrt"},
                     {0: LR, 50: LR, 75: LR * (1 - math.sqrt(0.5)), 100: 0.0}, id="wsd-sqrt-fraction"),
    ],
)
def test_every_schedule_variant_is_accepted_and_means_what_it_says(schedule, expected):
    from fntrain import builders

    raw = {"output_dir": "o", "data": {"name": "digits"}, "model": {"name": "mlp"},
           "loop": {"kind": "steps", "num_steps": TOTAL},
           "optimizer": {"name": "sgd", "learning_rate": LR, "schedule": schedule}}
    config = cfg.validate(raw, "schedule.yaml")
    assert_section_holds(config.optimizer.schedule, schedule, "optimizer.schedule")
    fn = builders.build_schedule(config.optimizer, TOTAL)
    for step, value in expected.items():
        # optax evaluates schedules in float32: 1e-6 relative, 1e-8 absolute near 0.
        assert float(fn(step)) == pytest.approx(value, rel=1e-6, abs=1e-8), step


@pytest.mark.parametrize("loss", list(cfg.LOSS_VARIANTS))
def test_every_builtin_loss_name_is_accepted(loss):
    raw = {"output_dir": "o", "data": {"name": "digits"}, "model": {"name": "mlp"},
           "loop": {"kind": "steps", "num_steps": 5}, "loss": {"name": loss}}
    config = cfg.validate(raw, "loss.yaml")
    assert config.loss.name == loss and type(config.loss) is cfg.LOSS_VARIANTS[loss]


def test_custom_kwargs_round_trip_unchanged():
    """kwargs are frozen for hashing; thawing must give back exactly what the config said."""
    kwargs = {"pairs": [["a", 1], ["b", 2]], "empty": {}, "nested": {"k": [1, 2]}, "f": 0.5}
    raw = {"output_dir": "o", "data": {"name": "digits"}, "loop": {"kind": "steps", "num_steps": 5},
           "model": {"name": "fntrain.nn:mlp", "kwargs": kwargs}}
    config = cfg.validate(raw, "kwargs.yaml")
    assert config.model.kwargs_dict == kwargs
    assert cfg.config_to_dict(config)["model"]["kwargs"] == kwargs


# --------------------------------------------------------------------------- 6. bad configs


@pytest.mark.parametrize("case_id", list(BAD_CASES))
def test_bad_config_exits_2_with_one_error_line(in_dir, capsys, case_id):
    case = BAD_CASES[case_id]
    argv = bad_argv(case_id, in_dir)
    rc, out, err = run_main(argv, capsys)
    needles = [n.replace("{cfg}", case.config) for n in case.needles]
    assert_one_error_line(rc, err, needles)
    assert out == ""
    assert not (in_dir / "out").exists(), "a refused config must not create its output_dir"


def test_there_are_at_least_25_bad_cases():
    assert len(BAD_CASES) >= 25


@pytest.mark.parametrize("case_id", SUBPROCESS_BAD_CASES)
def test_bad_config_in_a_subprocess(cli_runs, case_id):
    base, runs = cli_runs
    run = runs[f"bad:{case_id}"]
    case = BAD_CASES[case_id]
    assert_one_error_line(run.rc, run.stderr, [n.replace("{cfg}", case.config) for n in case.needles])
    assert run.stdout == ""
    assert not (base / f"bad_{case_id}" / "out").exists()


@pytest.mark.parametrize("seed", [-1, 2**64], ids=["negative", "too-big-for-64-bits"])
def test_unusual_seed_trains_or_is_refused_cleanly(in_dir, capsys, seed):
    """A seed the schema accepts must work for every dataset; one it cannot use must be a config error."""
    raw = bad_base()
    raw["data"] = {"name": "classification", "num_examples": 100}
    raw["loop"]["num_steps"] = 2
    write_yaml(in_dir / "seed.yaml", raw)
    rc, out, err = run_main(["train", "seed.yaml", f"seed={seed}"], capsys)
    if rc != 0:
        assert_one_error_line(rc, err, ("seed", "seed.yaml"))
        assert not (in_dir / "out").exists()


def test_cli_without_a_command_is_a_usage_error(capsys):
    rc, out, err = run_main([], capsys)
    assert_one_error_line(rc, err, ("required",))


# --------------------------------------------------------------------------- 7. YAML 1.1 floats


def test_exponent_without_a_dot_is_a_float(in_dir):
    raw_text = yaml.safe_dump(digits_raw("runs/y")).replace("learning_rate: 0.01", "learning_rate: 1e-3")
    assert "learning_rate: 1e-3" in raw_text
    (in_dir / "y.yaml").write_text(raw_text)
    config = cfg.load_config(in_dir / "y.yaml")
    assert type(config.optimizer.learning_rate) is float and config.optimizer.learning_rate == 0.001
    # Where no schema field coerces it (kwargs), the YAML loader itself must give a float.
    parsed = cfg.parse_yaml("a: 1e-3\nb: 5E+2\nc: -2e-2\nd: 3.0e-4\ne: 1_000\nf: '1e-3'", "inline")
    assert parsed == {"a": 0.001, "b": 500.0, "c": -0.02, "d": 3e-4, "e": 1000, "f": "1e-3"}
    assert [type(parsed[k]) for k in "abcdef"] == [float, float, float, float, int, str]
    assert cfg.parse_override("optimizer.learning_rate=3e-4") == (("optimizer", "learning_rate"), 3e-4)


# --------------------------------------------------------------------------- 8. user-defined model and dataset


def test_user_model_and_dataset_train_end_to_end(cli_runs, monkeypatch):
    base, runs = cli_runs
    monkeypatch.syspath_prepend(str(base))  # so that the saved config's cli_plugins names resolve here too
    run = runs["plugin"].check()
    run_dir = base / "runs" / "plugin"
    n_val = n_test = round(0.1 * PLUGIN_N)
    assert f"data: {PLUGIN_N - n_val - n_test} train / {n_val} val / {n_test} test examples" in run.stdout
    # num_outputs was inferred from the integer labels {0, 1} and passed to the model function.
    assert json.loads((base / "model_called.json").read_text()) == {"num_outputs": 2, "hidden": PLUGIN_HIDDEN}
    params = read_params(run_dir)
    assert {k: v.shape for k, v in params.items()} == {
        "params/dense_0/w": (PLUGIN_DIM, PLUGIN_HIDDEN), "params/dense_0/b": (PLUGIN_HIDDEN,),
        "params/dense_2/w": (PLUGIN_HIDDEN, 2), "params/dense_2/b": (2,),
    }
    summary = read_summary(run_dir)
    assert summary["num_params"] == PLUGIN_DIM * PLUGIN_HIDDEN + PLUGIN_HIDDEN + PLUGIN_HIDDEN * 2 + 2
    # Clusters 8 standard deviations apart: 30 adam steps at lr 0.05 separate them.
    assert summary["final"]["val"]["accuracy"] >= 0.95
    assert summary["final"]["test"]["accuracy"] >= 0.95
    assert cfg.load_config(run_dir / "config.yaml").data.name == "cli_plugins:blobs"


def test_user_dataset_receives_its_kwargs_unchanged(cli_runs):
    base, runs = cli_runs
    runs["plugin"].check()
    got = json.loads((base / "dataset_called.json").read_text())
    assert got["scale_type"] == "float" and got["scale"] == 1e-3  # 1e-3 in YAML is a float
    assert (got["num_examples"], got["dim"]) == (PLUGIN_N, PLUGIN_DIM)
    assert got["options"] == PLUGIN_OPTIONS


# --------------------------------------------------------------------------- 9. the file loaders


def test_npz_loader_run(cli_runs):
    base, runs = cli_runs
    run = runs["npz"].check()
    run_dir = base / "runs" / "npz"
    assert "data: 192 train / 24 val / 24 test examples" in run.stdout
    lines = read_metrics(run_dir)
    # kind epochs, 2 epochs of 192 / 32 = 6 steps: val after each epoch, once, at steps 6 and 12.
    assert [(m["step"], m["epoch"]) for m in lines if m["split"] == "val"] == [(6, 1.0), (12, 2.0)]
    assert [m["step"] for m in lines if m["split"] == "train"] == [4, 8, 12]
    params = read_params(run_dir)
    assert params["params/dense_1/w"].shape == (NPZ_F, 16)
    assert params["params/dense_3/w"].shape == (16, NPZ_CLASSES)
    train = [m for m in lines if m["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]


def test_idx_loader_run(cli_runs):
    base, runs = cli_runs
    run = runs["idx"].check()
    run_dir = base / "runs" / "idx"
    assert "data: 128 train / 16 val / 16 test examples" in run.stdout
    params = read_params(run_dir)
    # 8x8x1 images, flattened: dense(8) -> batch norm -> relu -> dense(4 classes).
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes == {
        "params/dense_1/w": (64, 8), "params/dense_1/b": (8,),
        "params/batch_norm_2/scale": (8,), "params/batch_norm_2/offset": (8,),
        "params/dense_4/w": (8, 4), "params/dense_4/b": (4,),
        "model_state/batch_norm_2/mean": (8,), "model_state/batch_norm_2/var": (8,),
    }
    # Batch statistics moved away from their initial zeros during training.
    assert np.abs(params["model_state/batch_norm_2/mean"]).max() > 0
    assert read_summary(run_dir)["steps"] == 6


def test_csv_loader_run(cli_runs):
    base, runs = cli_runs
    run = runs["csv"].check()
    run_dir = base / "runs" / "csv"
    assert "data: 120 train / 15 val / 15 test examples" in run.stdout
    lines = read_metrics(run_dir)
    # A float target with MSE: no accuracy anywhere.
    for m in lines:
        assert "accuracy" not in m
    params = read_params(run_dir)
    assert params["params/dense_1/w"].shape == (3, 8)  # 4 columns minus the "price" target
    assert params["params/dense_3/w"].shape == (8, 1)
    final = read_summary(run_dir)["final"]
    assert set(final) == {"train", "val", "test"}
    assert all(math.isfinite(v["loss"]) for v in final.values())
    train = [m for m in lines if m["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
