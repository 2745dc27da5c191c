"""Opening a run directory: a new run, a replaced one (``--overwrite``) or a continued one (``--resume``).

The contract, in the order :func:`prepare` and :func:`open_run` check it:

- ``output_dir`` is a directory (not empty, not a file), with no symbolic link where
  fntrain writes.
- One run per directory at a time: the directory's lock (:mod:`fntrain.runlock`) is
  taken before anything is written or deleted; a second ``train`` there exits 2 at once,
  naming the process that holds it.
- An existing run is never replaced without ``--overwrite``, and ``--overwrite`` deletes
  only fntrain's own files, in a directory fntrain marked as its own.
- ``--resume`` always continues: from the newest complete, intact checkpoint (falling
  back past damaged ones), or, where there is none (the run was killed before its first
  one), by starting the run afresh in the same directory, saying so in one line.
- ``--resume`` with a changed config is never silent: the keys that may change
  (:data:`fntrain.config_diff.RESUMABLE`) are listed in one line and recorded in
  ``config_history.jsonl``; any other change stops with one line naming each key.

:func:`prepare` runs before the experiment is built (it reads and locks only), so that
a refused start costs nothing and changes nothing; :func:`open_run` then creates,
replaces or restores, once the initial train state exists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import jax

from fntrain import config as cfg
from fntrain import config_diff
from fntrain import rundir as rd
from fntrain.checkpoint import Checkpointer, remove_incomplete
from fntrain.errors import ConfigError
from fntrain.runlock import RunLock, check_free
from fntrain.state import TrainState


@dataclasses.dataclass
class Opening:
    """What :func:`prepare` found and holds.

    Attributes:
      path: the run directory.
      mode: ``"new"`` (nothing there), ``"overwrite"`` or ``"resume"``.
      lock: the directory's lock (None on processes other than 0).
      changes: config changes accepted for a resume.
      had_run: the directory already held fntrain's files.
      notes: lines for the run's log (e.g. a resume without a config.yaml to compare with).
    """

    path: Path
    mode: str
    lock: Optional[RunLock]
    changes: list
    had_run: bool
    notes: list = dataclasses.field(default_factory=list)
    created: bool = False  # open_run made or replaced the run (an abandoned start then keeps the lock file)

    def abandon(self) -> None:
        """Releases the lock after a start-up that failed; removes the lock file and the
        directories it made if no run was written."""
        if self.lock is not None:
            self.lock.release(remove_created=not self.created and not self.had_run)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def prepare(config: cfg.Config, *, overwrite: bool, resume: bool) -> Opening:
    """Checks ``output_dir`` against the contract and takes its lock; writes only the lock.

    Raises:
      ConfigError: a bad ``output_dir``, a directory in use, a run that would be replaced
        without ``--overwrite``, a directory not fntrain's, or a config change that
        ``--resume`` cannot accept.
      StorageError: the directory or its lock file cannot be written.
    """
    path = rd.check_output_dir(config.output_dir)
    writer = jax.process_index() == 0
    existing = rd.fntrain_entries(path)
    if writer:
        check_free(path)
    if existing and not (overwrite or resume):
        raise ConfigError(
            f"output_dir {str(path)!r} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            "--overwrite to replace it, or set output_dir=<another directory>"
        )
    if existing and not rd.is_marked(path):
        raise rd.not_fntrains(path, existing)
    mode = "overwrite" if overwrite else "resume" if resume else "new"
    notes, changes = [], []
    if mode == "resume" and existing:
        changes = _resume_changes(path, config)
        if changes is None:
            notes.append(f"{path / rd.CONFIG} is missing: this config could not be compared with the run's")
            changes = []
    lock = RunLock.acquire(path) if writer else None
    return Opening(path, mode, lock, changes, had_run=bool(existing), notes=notes)


def open_run(
    opening: Opening, config: cfg.Config, like: TrainState, say: Callable[[str], None]
) -> tuple[rd.RunDir, Checkpointer, Optional[tuple[TrainState, dict]]]:
    """Creates, replaces or restores the run; returns ``(run_dir, checkpointer, restored)``
    where ``restored`` is ``(train_state, meta)`` or None for a run that starts at step 0.

    Raises:
      ConfigError: the checkpoint's parameters do not fit the model.
      StorageError: a file cannot be written, read or removed.
    """
    path, keep = opening.path, config.checkpoint.keep
    if opening.mode == "resume" and opening.had_run:
        if jax.process_index() == 0:
            remove_incomplete(path, say)
        checkpointer = Checkpointer(path, keep, say=say)
        restored = checkpointer.restore_latest(like)
        if restored is not None:
            step = int(restored[1]["step"])
            checkpointer.discard_after(step)
            run = rd.RunDir.reopen(path, config, step, opening.changes)
            run.truncate_metrics(step)
            opening.created = True
            return run, checkpointer, restored
        checkpointer.close()
        say(f"no complete checkpoint in {path} to resume from: starting the run afresh there")
    if opening.mode != "new" and jax.process_index() == 0:
        rd.remove_run_files(path)
    run = rd.RunDir.create(path, config)
    opening.created = True
    return run, Checkpointer(path, keep, say=say), None


def _resume_changes(path: Path, config: cfg.Config) -> Optional[list]:
    """The accepted changes from the run's ``config.yaml`` to ``config`` (None: it has none).

    Raises:
      ConfigError: a key outside :data:`~fntrain.config_diff.RESUMABLE` changed.
    """
    old = _saved_config(path / rd.CONFIG)
    if old is None:
        return None
    found = config_diff.changes(old, cfg.config_to_dict(config))
    refused = [c for c in found if not config_diff.resumable(c.key)]
    if refused:
        raise ConfigError(
            f"--resume with a changed config: {config_diff.describe(refused)}; these keys cannot change within a "
            f"run (only the run's length, its evaluation, logging and checkpoint cadence, output_dir, callbacks "
            f"and parallel.* can): resume with the run's own config ({path / rd.CONFIG}), or start a new run "
            "with --overwrite or another output_dir"
        )
    return found


def _saved_config(path: Path) -> Optional[dict]:
    """The run's saved config as a plain dict (normalised through the schema when it
    still validates), or None where there is none."""
    if not path.is_file():
        return None
    try:
        return cfg.config_to_dict(cfg.load_config(path))
    except ConfigError:
        pass
    try:
        raw = cfg.parse_yaml(path.read_text(), str(path))
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot read the run's {path} to compare it with this config ({e}); restore it, or start a new run "
            "with --overwrite or another output_dir"
        ) from None
    return raw if isinstance(raw, dict) else None
