"""Checkpoints of the whole training run, written and read with orbax-checkpoint.

A checkpoint holds the ``TrainState`` (PRNG key as raw key data) and a JSON
``meta`` dict: the data iterator's position, the loop's bookkeeping (early
stopping, the metrics of the unfinished log window) and the parameter shapes.
Orbax writes each step into a temporary directory and renames it when complete,
so a killed write is never mistaken for a checkpoint; one that is damaged
afterwards is skipped with a warning in favour of the previous one.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from fntrain.errors import ConfigError
from fntrain.nn.summary import path_str
from fntrain.state import TrainState

LATEST_DIR = "checkpoints"
BEST_DIR = "best_checkpoint"


def _ocp():
    import orbax.checkpoint as ocp

    # Orbax logs every save at INFO level; training output has its own progress lines.
    logging.getLogger("absl").setLevel(logging.WARNING)
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
      keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, run_dir: str | Path, keep: int):
        ocp = _ocp()
        self._ocp = ocp
        self.run_dir = Path(run_dir).absolute()

        def manager(name: str, max_to_keep: int):
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
            )
            return ocp.CheckpointManager(self.run_dir / name, options=options)

        self.latest = manager(LATEST_DIR, keep)
        self.best = manager(BEST_DIR, 1)

    def save(self, ts: TrainState, meta: dict, *, best: bool = False) -> str:
        """Writes ``ts`` and ``meta`` at step ``meta["step"]`` (to the best slot if ``best``);
        returns the checkpoint's directory."""
        manager = self.best if best else self.latest
        step = int(meta["step"])
        path = str(Path(manager.directory) / str(step))
        if step in manager.all_steps():
            return path
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(_to_saveable(ts)), meta=self._ocp.args.JsonSave(meta)
        )
        manager.save(step, args=args, force=True)
        return path

    def latest_step(self) -> Optional[int]:
        return self.latest.latest_step()

    def _restore(self, manager, like: TrainState) -> Optional[tuple[TrainState, dict]]:
        expected = param_shapes(like.params)
        for step in sorted(manager.all_steps(), reverse=True):
            where = str(Path(manager.directory) / str(step))
            try:
                meta = manager.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # a damaged checkpoint: fall back to the one before
                warnings.warn(f"skipping unreadable checkpoint {where}: {type(e).__name__}: {str(e)[:200]}")
                continue
            check_compatible(meta.get("param_shapes", {}), expected, where)
            args = self._ocp.args.Composite(state=self._ocp.args.StandardRestore(_abstract(_to_saveable(like))))
            try:
                state = manager.restore(step, args=args)["state"]
            except Exception as e:
                warnings.warn(f"skipping unreadable checkpoint {where}: {type(e).__name__}: {str(e)[:200]}")
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
        """The newest readable checkpoint as ``(train_state, meta)``, or None if there is none.

        Args:
          like: a ``TrainState`` with the expected structure, shapes and shardings.

        Raises:
          ConfigError: the checkpoint's parameters do not match ``like``'s.
        """
        return self._restore(self.latest, like)

    def restore_best(self, like: TrainState) -> Optional[tuple[TrainState, dict]]:
        """The best checkpoint (see ``save(best=True)``), or None."""
        return self._restore(self.best, like)

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def json_ready(tree: Any) -> Any:
    """Host copies of small device values, for ``meta``."""
    return jax.tree.map(lambda v: np.asarray(v).tolist() if isinstance(v, (jax.Array, np.ndarray, np.generic)) else v, tree)
