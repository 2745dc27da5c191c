"""The run directory: resolved config, metrics log, summary and final parameters.

Every whole-file write goes to a temporary file first and is renamed into place
(:func:`fntrain.storage.atomic_write`), so a crash never leaves a half-written
``summary.json`` or ``params.npz``. A directory fntrain made holds ``.fntrain/run.json``
(its marker; ``.fntrain/lock`` is the run's lock, :mod:`fntrain.runlock`): ``--overwrite``
deletes only fntrain's own files, and only in a directory so marked. fntrain never
follows a symbolic link inside a run directory.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from fntrain import config as cfg
from fntrain.config_diff import Change
from fntrain.errors import ConfigError
from fntrain.nn.summary import path_str
from fntrain import storage
from fntrain.storage import storage_errors

__all__ = ["RunDir", "check_output_dir", "fntrain_entries", "is_marked", "remove_run_files"]

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PARAMS = "params.npz"
HISTORY = "config_history.jsonl"  # the changes each accepted --resume made to config.yaml
RUN_FILES = (CONFIG, METRICS, SUMMARY, PARAMS)
RUN_DIRS = ("checkpoints", "best_checkpoint")
MEMBERS_DIR = "members"  # a population's per-member parameters (fntrain.population)
OWN_DIR = ".fntrain"
MARKER = f"{OWN_DIR}/run.json"
OWNED = (*RUN_FILES, HISTORY, *RUN_DIRS, MEMBERS_DIR)  # what --overwrite deletes (the lock stays)


def check_output_dir(output_dir: str) -> Path:
    """``output_dir`` as a path, after the checks that need no writing.

    Raises:
      ConfigError: it is empty, a file, or holds a symbolic link where fntrain writes.
    """
    if not str(output_dir).strip():
        raise ConfigError(
            f"output_dir: expected a directory for the run (e.g. runs/NAME), got {output_dir!r}; an empty path "
            "would write the run's files into the working directory"
        )
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"output_dir {str(path)!r} is a file, not a directory; set output_dir=<a directory> (fntrain writes "
            "config.yaml, metrics.jsonl, checkpoints/ ... into it)"
        )
    for name in (*OWNED, OWN_DIR):
        entry = path / name
        if entry.is_symlink():
            raise ConfigError(
                f"{str(entry)!r} is a symbolic link (to {str(entry.readlink())!r}); fntrain does not follow links "
                "inside a run directory, so that it never deletes or overwrites files elsewhere: replace it with "
                "a real directory or file, or set output_dir=<another directory>"
            )
    return path


def fntrain_entries(path: Path) -> list[str]:
    """The names fntrain writes that already exist in ``path``."""
    return [name for name in OWNED if (path / name).exists()]


def is_marked(path: Path) -> bool:
    """Whether fntrain made the run directory ``path``: it holds ``.fntrain/run.json``, or
    (a run from before the marker) a ``metrics.jsonl`` beside a ``config.yaml`` that is a
    valid fntrain config."""
    if (path / MARKER).is_file():
        return True
    if not (path / METRICS).is_file():
        return False
    try:
        cfg.load_config(path / CONFIG)
    except ConfigError:
        return False
    return True


def remove_run_files(path: Path) -> None:
    """Deletes fntrain's own files and directories in ``path`` (never another tool's,
    never through a link); the caller holds the run's lock.

    Raises:
      ConfigError: ``path`` holds fntrain's names but is not marked as fntrain's.
    """
    existing = fntrain_entries(path)
    if existing and not is_marked(path):
        raise not_fntrains(path, existing)
    for name in existing:
        target = path / name
        with storage_errors(f"cannot delete {target}"):
            if target.is_symlink() or not target.is_dir():
                target.unlink()
            else:
                shutil.rmtree(target)


def not_fntrains(path: Path, existing: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"output_dir {str(path)!r} holds {', '.join(existing)}, which fntrain did not write (the directory has "
        f"no {MARKER} and no fntrain config.yaml); fntrain replaces or resumes only its own runs: set "
        "output_dir=<another directory>, or move those files away yourself"
    )


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
    def create(cls, path: str | Path, config: cfg.Config) -> "RunDir":
        """Makes a new run in ``path`` (its lock held, fntrain's old files removed): the
        marker, then the resolved config.

        Raises:
          StorageError: a file cannot be written.
        """
        run = cls(path)
        if run.writer:
            _write_marker(run.path)
            storage.atomic_write(run.path / CONFIG, cfg.dump_config(config).encode())
        return run

    @classmethod
    def reopen(cls, path: str | Path, config: cfg.Config, step: int, changes: Sequence[Change] = ()) -> "RunDir":
        """Continues a run at ``step``: accepted config changes are appended to
        ``config_history.jsonl`` (old and new values, so the first part's config is kept),
        then ``config.yaml`` is rewritten."""
        run = cls(path)
        if run.writer and not (run.path / MARKER).is_file():  # a run from before the marker
            _write_marker(run.path)
        if run.writer and changes:
            record = {"resumed_at_step": step, "time": _now(), "changes": {c.key: [c.old, c.new] for c in changes}}
            storage.append_line(run.path / HISTORY, json.dumps(record, default=str))
        if run.writer:
            storage.atomic_write(run.path / CONFIG, cfg.dump_config(config).encode())
        return run

    def truncate_metrics(self, step: int) -> None:
        """Drops lines a resumed run will write again: those past ``step``, and the final test lines."""
        path = self.path / METRICS
        if not self.writer or not path.exists():
            return
        kept = []
        with storage_errors(f"cannot read {path}"):
            text = path.read_text(errors="replace")
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill or a full disk
                continue
            if isinstance(record, dict) and record.get("step", step + 1) <= step and record.get("split") not in ("test", "test_ema"):
                kept.append(line + "\n")
        storage.atomic_write(path, "".join(kept).encode())

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        """Appends one line ``{"step", "split", **values}`` to ``metrics.jsonl``."""
        if not self.writer:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
        storage.append_line(self.path / METRICS, json.dumps(record))

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            storage.atomic_write(self.path / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())

    def save_params(self, params, model_state) -> None:
        """Saves parameters and model state as ``.npz`` (plain arrays, no pickle)."""
        if not self.writer:
            return
        arrays = {**flatten_tree(params, "params"), **flatten_tree(model_state, "model_state")}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        storage.atomic_write(self.path / PARAMS, buffer.getvalue())

    def load_params(self, params_template, state_template, name: str = PARAMS):
        """Loads ``params.npz`` (or ``name``, e.g. ``members/params_3.npz``) into the structure
        of the templates (shapes checked)."""
        path = self.path / name
        if not path.exists():
            raise ConfigError(f"{str(path)!r} does not exist; train the config first (fntrain train ...)")
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        params = unflatten_like(params_template, arrays, "params", str(path))
        state = unflatten_like(state_template, arrays, "model_state", str(path))
        return params, state


def _write_marker(path: Path) -> None:
    with storage_errors(f"cannot create output_dir {str(path)!r}"):
        (path / OWN_DIR).mkdir(parents=True, exist_ok=True)
    storage.atomic_write(path / MARKER, json.dumps({"written_by": "fntrain", "created": _now()}).encode())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _plain(value):
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).item()
    return value
