"""Relative paths and module folders: against the config file's folder (overrides: the working directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fntrain import cli
from fntrain import config as cfg
from fntrain.config import paths

TINY_NET = (
    "import fntrain\n\ndef build(num_outputs, hidden=6):\n"
    "    return fntrain.nn.serial(fntrain.nn.dense(hidden), fntrain.nn.tanh, fntrain.nn.dense(num_outputs))\n"
)


@pytest.fixture
def clean_imports(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("u_"):
            del sys.modules[name]


def write(path: Path, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def raw_config(**sections) -> dict:
    return {"output_dir": "out", "data": {"name": "digits"}, "model": {"name": "mlp"},
            "loop": {"kind": "steps", "num_steps": 2}, **sections}


def test_file_values_resolve_against_its_folder_and_overrides_against_the_working_directory(tmp_path, monkeypatch):
    project, work = tmp_path / "project", tmp_path / "work"
    work.mkdir()
    path = write(project / "c.yaml", raw_config(data={"name": "idx", "images_path": "data/images", "labels_path": "../labels"}))
    monkeypatch.chdir(work)
    config = cfg.load_config(Path("..") / "project" / "c.yaml")
    assert config.data.images_path == str(project / "data" / "images")
    assert config.data.labels_path == str(tmp_path / "labels")
    overridden = cfg.load_config(path, ["data.labels_path=mine/labels", "data.images_path=/abs/images"])
    assert overridden.data.labels_path == str(work / "mine" / "labels")
    assert overridden.data.images_path == "/abs/images"
    whole = cfg.load_config(path, ["data={name: npz, path: x.npz}"])
    assert whole.data.path == str(work / "x.npz")
    home = cfg.load_config(path, ["data.images_path=~/images"])
    assert home.data.images_path == os.path.expanduser("~/images")
    assert config.output_dir == "out"  # the run directory stays relative to the working directory


def test_every_path_key_of_data_resolves_by_its_name(tmp_path):
    raw = {"data": {"name": "some_future_source", "path": "a", "cache_path": "b/c", "path_note": "d", "x_path": 3},
           "model": {"name": "m", "path": "kept"}}
    out = paths.resolve(raw, tmp_path)
    assert out["data"] == {"name": "some_future_source", "path": str(tmp_path / "a"), "cache_path": str(tmp_path / "b/c"),
                           "path_note": "d", "x_path": 3}
    assert out["model"] == {"name": "m", "path": "kept"}  # only data's keys are paths
    assert raw["data"]["path"] == "a"  # resolve copies


def test_module_folders_are_recorded_where_a_name_came_from(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    raw = raw_config(model={"name": "fntrain.nn:mlp"}, loss={"name": "fntrain.losses:huber"},
                     metrics=["accuracy", "fntrain.metrics:accuracy"],
                     callbacks=[{"name": "fntrain.metrics:accuracy", "module_dir": "lib"}])
    path = write(tmp_path / "project" / "c.yaml", raw)
    monkeypatch.chdir(work)
    config = cfg.load_config(path)
    assert config.model.module_dir == config.loss.module_dir == config.metrics_module_dir == str(tmp_path / "project")
    assert config.callbacks[0].module_dir == str(tmp_path / "project" / "lib")
    assert cfg.load_config(path, ["model.name=mlp"]).model.name == "mlp"  # the file's module_dir goes with its name
    assert cfg.load_config(path, ["metrics=[fntrain.metrics:accuracy]"]).metrics_module_dir == str(work)
    assert cfg.load_config(path, ["metrics=[accuracy]"]).metrics_module_dir is None
    assert cfg.load_config(path, ["model.module_dir=here"]).model.module_dir == str(work / "here")
    builtin = cfg.load_config(write(tmp_path / "b.yaml", raw_config()))
    assert "module_dir" not in cfg.dump_config(builtin)  # nothing to import: nothing recorded


def test_the_resolved_config_loads_back_equal_from_anywhere(tmp_path, monkeypatch):
    raw = raw_config(data={"name": "csv", "path": "d.csv"}, model={"name": "fntrain.nn:mlp"})
    path = write(tmp_path / "project" / "c.yaml", raw)
    config = cfg.load_config(path)
    saved = tmp_path / "saved" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(cfg.dump_config(config))
    for where in (tmp_path, tmp_path / "saved"):
        monkeypatch.chdir(where)
        assert cfg.load_config(saved) == config


def test_a_run_from_another_directory_repeats_from_its_saved_config(tmp_path, monkeypatch, clean_imports, capsys):
    """Data file and model module beside the config, run from a second folder, repeated from a third."""
    project, work, third = tmp_path / "project", tmp_path / "work", tmp_path / "third"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    (project / "data").mkdir(parents=True)
    np.savez(project / "data" / "train.npz", x=x, y=(x[:, 0] > 0).astype(np.int32))
    (project / "u_paths_net.py").write_text(TINY_NET)
    raw = {"seed": 0, "output_dir": "runs/first",
           "data": {"name": "npz", "path": "data/train.npz", "batch_size": 16},
           "model": {"name": "u_paths_net:build", "kwargs": {"hidden": 5}},
           "loop": {"kind": "steps", "num_steps": 6}, "log": {"every_steps": 2, "progress": "none"}}
    write(project / "c.yaml", raw)
    work.mkdir()
    third.mkdir()

    monkeypatch.chdir(work)
    assert cli.main(["train", "../project/c.yaml"]) == 0, capsys.readouterr().err
    first = work / "runs" / "first"
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["data"]["path"] == str(project / "data" / "train.npz")
    assert saved["model"]["module_dir"] == str(project)

    # A fresh process in a third folder, with nothing on its import path but the installed packages.
    again = subprocess.run(
        [sys.executable, "-P", "-m", "fntrain", "train", str(first / "config.yaml"), "output_dir=runs/again"],
        cwd=third, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    second = third / "runs" / "again"

    def metrics(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert metrics(second) == metrics(first)  # the same seed, data and code: bit for bit
    with np.load(first / "params.npz") as a, np.load(second / "params.npz") as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
