"""The run directory: resolved config, metrics log, summary and final parameters.

Every whole-file write goes to a temporary file first and is renamed into place,
so a crash never leaves a half-written ``summary.json`` or ``params.npz``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fntrain import config as cfg
from fntrain.errors import ConfigError
from fntrain.nn.summary import path_str

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PARAMS = "params.npz"
RUN_FILES = (CONFIG, METRICS, SUMMARY, PARAMS)
RUN_DIRS = ("checkpoints", "best_checkpoint")


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def flatten_tree(tree, prefix: str) -> dict[str, np.ndarray]:
    """``{"dense_0": {"w": a}}`` -> ``{"<prefix>/dense_0/w": a}``."""
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        flat[f"{prefix}/{path_str(path)}"] = np.asarray(leaf)
    return flat


def unflatten_like(template, arrays: dict[str, np.ndarray], prefix: str, source: str):
    """The inverse of ``flatten_tree``, checked against ``template``'s keys and shapes."""
    expected = flatten_tree(jax.tree.map(lambda a: np.zeros((0,)), template), prefix)
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ConfigError(f"{source}: no array for parameter {missing[0]!r}; the file was written by another model")
    leaves = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(template):
        name = f"{prefix}/{path_str(path)}"
        array = arrays[name]
        if array.shape != tuple(leaf.shape):
            raise ConfigError(
                f"{source}: parameter {name!r} has shape {array.shape} but the model expects {tuple(leaf.shape)}"
            )
        leaves.append(array.astype(leaf.dtype))
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


class RunDir:
    """Writes one run's outputs under ``path``.

    On a multi-host run only process 0 writes; the others' calls do nothing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.writer = jax.process_index() == 0

    @classmethod
    def create(
        cls, path: str | Path, config: cfg.Config, *, overwrite: bool = False, resume_hint: bool = True
    ) -> "RunDir":
        """Makes the directory and writes the resolved config.

        Raises:
          ConfigError: ``path`` already holds a run and ``overwrite`` is false.
        """
        run = cls(path)
        if not run.writer:
            return run
        existing = [name for name in RUN_FILES + RUN_DIRS if (run.path / name).exists()]
        if existing and not overwrite:
            resume = "pass --resume to continue it, " if resume_hint and (run.path / "checkpoints").exists() else ""
            raise ConfigError(
                f"output_dir {str(run.path)!r} already holds a run ({', '.join(existing)}); "
                f"{resume}pass --overwrite to replace it, or set output_dir=<another directory>"
            )
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create output_dir {str(run.path)!r}: {e.strerror}") from None
        for name in existing:
            target = run.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        atomic_write(run.path / CONFIG, cfg.dump_config(config).encode())
        return run

    @classmethod
    def reopen(cls, path: str | Path, config: cfg.Config) -> "RunDir":
        """Continues a run: the resolved config is rewritten (the loop length may have changed)."""
        run = cls(path)
        if run.writer:
            atomic_write(run.path / CONFIG, cfg.dump_config(config).encode())
        return run

    def truncate_metrics(self, step: int) -> None:
        """Drops lines a resumed run will write again: those past ``step``, and the final test lines."""
        path = self.path / METRICS
        if not self.writer or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record["step"] <= step and record["split"] not in ("test", "test_ema"):
                kept.append(line)
        atomic_write(path, "".join(kept).encode())

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        """Appends one line ``{"step", "split", **values}`` to ``metrics.jsonl``."""
        if not self.writer:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            atomic_write(self.path / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())

    def save_params(self, params, model_state) -> None:
        """Saves parameters and model state as ``.npz`` (plain arrays, no pickle)."""
        if not self.writer:
            return
        arrays = {**flatten_tree(params, "params"), **flatten_tree(model_state, "model_state")}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(self.path / PARAMS, buffer.getvalue())

    def load_params(self, params_template, state_template):
        """Loads ``params.npz`` into the structure of the templates (shapes checked)."""
        path = self.path / PARAMS
        if not path.exists():
            raise ConfigError(f"{str(path)!r} does not exist; train the config first (fntrain train ...)")
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        params = unflatten_like(params_template, arrays, "params", str(path))
        state = unflatten_like(state_template, arrays, "model_state", str(path))
        return params, state


def _plain(value):
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).item()
    return value
