"""Checkpoints of the whole training run, written and read with orbax-checkpoint.

A checkpoint holds the ``TrainState`` (PRNG key as raw key data) and a JSON
``meta`` dict: the data iterator's position, the loop's bookkeeping (early
stopping, the metrics of the unfinished log window) and the parameter shapes.

A checkpoint is complete once sealed. orbax writes each step into a
``<step>.orbax-checkpoint-tmp*`` directory and renames it when its write is done; fntrain
then seals it with a checksum per file (:mod:`fntrain.manifest`) and only then deletes
checkpoints past ``keep``, so a kill at any moment leaves the previous complete one. On the
next start half-written and unsealed checkpoints are removed; a restore verifies the
checksums and falls back past a damaged checkpoint with one line naming it.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np

from fntrain import manifest
from fntrain.errors import ConfigError, StorageError
from fntrain.nn.summary import path_str
from fntrain.state import TrainState
from fntrain.storage import describe, errno_of, storage_errors

LATEST_DIR = "checkpoints"
BEST_DIR = "best_checkpoint"
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of orbax's directory of a write in progress


def _not_from_orbax(record: logging.LogRecord) -> bool:
    """Drops orbax's log records (every save at INFO, its view of a failure at ERROR):
    fntrain reports what matters in its own lines, a failed write as one ``error:`` line
    and a damaged checkpoint as one warning."""
    return "orbax" not in record.pathname.replace("\\", "/").split("/")


def _ocp():
    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    if _not_from_orbax not in absl.filters:
        absl.addFilter(_not_from_orbax)
    _quiet_abandoned_writes()
    return ocp


def _to_saveable(ts: TrainState) -> dict:
    return {
        "step": ts.step,
        "params": ts.params,
        "model_state": ts.model_state,
        "opt_state": ts.opt_state,
        "key": jax.random.key_data(ts.key),
    }


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), tree)


def param_shapes(params) -> dict[str, list[int]]:
    """``{"dense_0/w": [64, 128], ...}``: what a checkpoint records to explain a mismatch."""
    return {
        path_str(path): list(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }


def check_compatible(saved: dict[str, list[int]], expected: dict[str, list[int]], where: str) -> None:
    """Raises a ConfigError naming the first parameter whose presence or shape differs."""
    for name in sorted(set(saved) | set(expected)):
        if name not in saved:
            raise ConfigError(f"{where} has no parameter {name!r}: it was written by a different model config")
        if name not in expected:
            raise ConfigError(f"{where} has parameter {name!r}, which this model config does not")
        if saved[name] != expected[name]:
            raise ConfigError(
                f"{where}: parameter {name!r} has shape {tuple(saved[name])} but this config's model expects "
                f"{tuple(expected[name])}; resume with the config the checkpoint was written with"
            )


class Checkpointer:
    """Saves and restores checkpoints under a run directory.

    Args:
      run_dir: the run directory; checkpoints go to ``run_dir/checkpoints/<step>``
        (the last ``keep``) and ``run_dir/best_checkpoint/<step>`` (one).
      keep: how many of the latest complete checkpoints to keep.
      say: where a line about a damaged checkpoint goes; stderr by default.

    Half-written checkpoints are removed by :func:`remove_incomplete`, which the run's
    opening calls under the run directory's lock (never while another process writes).
    """

    def __init__(self, run_dir: str | Path, keep: int, *, say: Optional[Callable[[str], None]] = None):
        ocp = _ocp()
        self._ocp = ocp
        self.run_dir = Path(run_dir).absolute()
        self.keep = keep
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.writer = jax.process_index() == 0

        def manager(name: str):
            # Retention is fntrain's (after sealing), so orbax keeps everything it writes.
            options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False, create=True)
            with storage_errors(f"cannot create {self.run_dir / name}"):
                return ocp.CheckpointManager(self.run_dir / name, options=options)

        self.latest = manager(LATEST_DIR)
        self.best = manager(BEST_DIR)

    def save(self, ts: TrainState, meta: dict, *, best: bool = False) -> str:
        """Writes and seals ``ts`` and ``meta`` at step ``meta["step"]`` (to the best slot if
        ``best``), then deletes complete checkpoints past ``keep``; returns its directory.

        Raises:
          StorageError: the write failed (e.g. the disk is full); the previous complete
            checkpoints are intact and the partial one is removed.
        """
        manager = self.best if best else self.latest
        step = int(meta["step"])
        path = Path(manager.directory) / str(step)
        if step in manager.all_steps() and manifest.is_sealed(path):
            return str(path)
        if step in manager.all_steps():  # an unsealed leftover: write it again
            _delete_step(manager, step)
            manager.reload()
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(_to_saveable(ts)), meta=self._ocp.args.JsonSave(meta)
        )
        with storage_errors(f"cannot write checkpoint {path}"):
            try:
                manager.save(step, args=args, force=True)
                if self.writer:
                    manifest.seal(path)
            except BaseException:
                self._forget_partial(manager)
                raise
        self._prune(manager, 1 if best else self.keep)
        return str(path)

    def _forget_partial(self, manager) -> None:
        """After a failed write: frees its space at once where possible (the next start
        removes what is left)."""
        try:
            if self.writer:
                _remove_incomplete_in(Path(manager.directory), lambda line: None)
            manager.reload()
        except Exception:  # noqa: BLE001 - the write's own error is the one to report
            pass

    def _prune(self, manager, keep: int) -> None:
        if self.writer:
            for step in self.complete_steps(manager)[:-keep]:
                _delete_step(manager, step)
        manager.reload()

    def complete_steps(self, manager=None) -> list[int]:
        """The sealed checkpoints' steps, oldest first."""
        manager = manager or self.latest
        return sorted(s for s in manager.all_steps() if manifest.is_sealed(Path(manager.directory) / str(s)))

    def latest_step(self) -> Optional[int]:
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def _restore(self, manager, like: TrainState) -> Optional[tuple[TrainState, dict]]:
        expected = param_shapes(like.params)
        for step in reversed(self.complete_steps(manager)):
            where = Path(manager.directory) / str(step)
            try:
                problem = manifest.verify(where)
                if problem is None:
                    meta = manager.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore()))["meta"]
                    check_compatible(meta.get("param_shapes", {}), expected, str(where))
                    restore = self._ocp.args.StandardRestore(_abstract(_to_saveable(like)))
                    state = manager.restore(step, args=self._ocp.args.Composite(state=restore))["state"]
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - unreadable for any reason: fall back, unless it is the disk's fault
                if errno_of(e) not in (None, errno.EIO):
                    raise StorageError(describe(e, f"cannot read checkpoint {where}")) from None
                problem = f"orbax cannot read it: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            if problem is not None:
                self.say(f"warning: checkpoint {where} is damaged ({problem}); falling back to the one before")
                continue
            ts = TrainState(
                step=state["step"],
                params=state["params"],
                model_state=state["model_state"],
                opt_state=state["opt_state"],
                key=jax.random.wrap_key_data(state["key"], impl=jax.random.key_impl(like.key)),
            )
            return ts, meta
        return None

    def restore_latest(self, like: TrainState) -> Optional[tuple[TrainState, dict]]:
        """The newest complete, intact checkpoint as ``(train_state, meta)``, or None if there is none.

        Damaged checkpoints (a checksum mismatch, unreadable by orbax) are skipped, each
        with one line through ``say``.

        Args:
          like: a ``TrainState`` with the expected structure, shapes and shardings.

        Raises:
          ConfigError: the checkpoint's parameters do not match ``like``'s.
          StorageError: a checkpoint cannot be read (e.g. permissions).
        """
        return self._restore(self.latest, like)

    def restore_best(self, like: TrainState) -> Optional[tuple[TrainState, dict]]:
        """The best checkpoint (see ``save(best=True)``), or None."""
        return self._restore(self.best, like)

    def discard_after(self, step: int) -> None:
        """Deletes every checkpoint past ``step`` (the run resumes from ``step`` and writes
        them again): damaged ones, and best checkpoints of the discarded steps."""
        for manager in (self.latest, self.best):
            if self.writer:
                for later in [s for s in manager.all_steps() if s > step]:
                    _delete_step(manager, later)
            manager.reload()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _abandoned_write(record: logging.LogRecord) -> bool:
    """asyncio's "Task/Future exception was never retrieved" for a write orbax gave up on
    after another of the same save failed on the filesystem (already reported)."""
    exc = record.exc_info[1] if record.exc_info else None
    text = record.getMessage()
    return not ("exception was never retrieved" in text and (errno_of(exc) if exc else errno_of(ValueError(text))))


def _quiet_abandoned_writes() -> None:
    """After a failed save (a full disk), the other writes of that save still finish: they
    call back into orbax's closed event loop (``RuntimeError: Event loop is closed``), their
    coroutines are closed late (at shutdown: ``ImportError: sys.meta_path is None``) and
    their tasks' errors are never retrieved; Python prints each as a traceback after the
    one ``error:`` line. Those are dropped; any other error still reaches its hook."""
    aio = logging.getLogger("asyncio")
    if _abandoned_write not in aio.filters:
        aio.addFilter(_abandoned_write)
    previous = sys.unraisablehook
    if getattr(previous, "fntrain_quiet", False):
        return

    def hook(unraisable) -> None:
        exc, obj = unraisable.exc_value, unraisable.object
        closed_loop = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
        code = getattr(obj, "cr_code", None)
        orbax_coroutine = code is not None and "orbax" in Path(code.co_filename).parts
        if not (closed_loop or orbax_coroutine):
            previous(unraisable)

    hook.fntrain_quiet = True
    sys.unraisablehook = hook


def _delete_step(manager, step: int) -> None:
    path = Path(manager.directory) / str(step)
    with storage_errors(f"cannot delete checkpoint {path}"):
        manifest.unseal(path)
        shutil.rmtree(path)


def remove_incomplete(run_dir: str | Path, say: Callable[[str], None]) -> None:
    """Removes what a stopped write left under a run directory's checkpoint directories:
    orbax's ``*.orbax-checkpoint-tmp*`` directories and unsealed step directories, each
    with one line through ``say``. Call it only while holding the run's lock.

    Raises:
      StorageError: one cannot be removed.
    """
    for name in (LATEST_DIR, BEST_DIR):
        _remove_incomplete_in(Path(run_dir) / name, say)


def _remove_incomplete_in(directory: Path, say: Callable[[str], None]) -> None:
    if not directory.is_dir() or directory.is_symlink():
        return
    for entry in sorted(directory.iterdir()):
        partial = TMP_MARK in entry.name
        unsealed = entry.name.isdigit() and entry.is_dir() and not manifest.is_sealed(entry)
        if not (partial or unsealed) or entry.is_symlink():
            continue
        with storage_errors(f"cannot remove the incomplete checkpoint {entry}"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        say(f"removed the incomplete checkpoint {entry} (its write was cut short)")


def json_ready(tree: Any) -> Any:
    """Host copies of small device values, for ``meta``."""
    return jax.tree.map(lambda v: np.asarray(v).tolist() if isinstance(v, (jax.Array, np.ndarray, np.generic)) else v, tree)
