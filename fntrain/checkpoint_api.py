"""Checkpoints of a ``TrainState`` from your own code: ``save_checkpoint`` and ``restore_checkpoint``.

The same orbax-checkpoint format and sealing as the loop's checkpoints
(:mod:`fntrain.checkpoint`, :mod:`fntrain.manifest`): ``directory/<step>/`` holds the state
(the PRNG key as its raw key data), a JSON record of every leaf's path, shape and dtype,
and your ``extra`` dict, and is sealed with a SHA-256 per file once written, so a restore
never reads a half-written or damaged checkpoint. Nothing is unpickled.

Example:
  >>> fntrain.save_checkpoint("ckpt", ts, step=int(ts.step), extra={"epoch": 3})
  >>> ts, extra = fntrain.restore_checkpoint("ckpt", like=ts)   # the latest step
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from fntrain import manifest
from fntrain.checkpoint import _abstract, _delete_step, _ocp
from fntrain.errors import ConfigError
from fntrain.nn.summary import path_str
from fntrain.state import TrainState
from fntrain.storage import storage_errors

__all__ = ["restore_checkpoint", "save_checkpoint"]

FORMAT = "fntrain.checkpoint/1"


def _typed(key) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def _saveable(ts: TrainState) -> dict:
    key = jax.random.key_data(ts.key) if _typed(ts.key) else ts.key
    return {"params": ts.params, "model_state": ts.model_state, "opt_state": ts.opt_state, "step": ts.step, "key": key}


def _leaves(tree: dict) -> dict[str, list]:
    """``{"params/dense_0/w": [[64, 128], "float32"], ...}``: params first, then model state,
    optimizer state, step and key (so a mismatch names the parameter, not its Adam moment)."""
    return {f"{part}/{path_str(p)}" if p else part: [list(np.shape(a)), str(getattr(a, "dtype", None) or np.asarray(a).dtype)]
            for part in tree for p, a in jax.tree_util.tree_leaves_with_path(tree[part])}


def _key_impl(key) -> Optional[str]:
    return str(jax.random.key_impl(key)) if _typed(key) else None


def _manager(directory: Path):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False, create=True)
    with storage_errors(f"cannot create {directory}"):
        return ocp, ocp.CheckpointManager(directory.absolute(), options=options)


def save_checkpoint(directory, train_state: TrainState, *, step: int, extra: Optional[dict] = None) -> str:
    """Writes ``train_state`` and ``extra`` to ``directory/<step>`` and seals it; returns that path.

    Args:
      directory: the checkpoints' folder (made if missing); one sub-folder per step.
      train_state: a ``fntrain.TrainState`` (a typed or a raw ``uint32`` PRNG key).
      step: the checkpoint's number (usually ``int(train_state.step)``).
      extra: a JSON-able dict (your loop's bookkeeping), returned by ``restore_checkpoint``.

    Raises:
      ConfigError: ``extra`` is not JSON-able, or ``step`` is already a complete checkpoint there.
      StorageError: the write failed (e.g. the disk is full); the partial checkpoint is removed.
    """
    extra = {} if extra is None else extra
    try:
        extra = json.loads(json.dumps(extra, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"save_checkpoint: extra must be a JSON-able dict (numbers, strings, lists, dicts): {e}") from None
    if not isinstance(extra, dict) or isinstance(step, bool) or int(step) != step or step < 0:
        raise ConfigError(f"save_checkpoint: expected extra a dict and step an int >= 0, got {type(extra).__name__} "
                          f"and {step!r}")
    directory, step = Path(directory), int(step)
    ocp, manager = _manager(directory)
    path = directory / str(step)
    try:
        if step in manager.all_steps() and manifest.is_sealed(path):
            raise ConfigError(f"save_checkpoint: {path} already holds a complete checkpoint of step {step}; "
                              "pick another step or delete it")
        if step in manager.all_steps():  # an unsealed leftover of a write cut short
            _delete_step(manager, step)
            manager.reload()
        tree = _saveable(train_state)
        meta = {"format": FORMAT, "step": step, "leaves": _leaves(tree), "key_impl": _key_impl(train_state.key),
                "extra": extra}
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
        with storage_errors(f"cannot write checkpoint {path}"):
            try:
                manager.save(step, args=args, force=True)
                if jax.process_index() == 0:
                    manifest.seal(path)
            except BaseException:
                if path.is_dir() and not manifest.is_sealed(path) and jax.process_index() == 0:
                    _delete_step(manager, step)
                raise
    finally:
        manager.close()
    return str(path)


def _pick_step(manager, directory: Path, step: Optional[int]) -> int:
    """``step``, or the newest sealed step for None; each must be a sealed, intact checkpoint."""
    sealed = sorted(s for s in manager.all_steps() if manifest.is_sealed(directory / str(s)))
    if step is None:
        if not sealed:
            raise ConfigError(f"restore_checkpoint: {directory} holds no complete checkpoint")
        step = sealed[-1]
    elif int(step) not in sealed:
        raise ConfigError(f"restore_checkpoint: {directory} has no complete checkpoint of step {step}; "
                          f"it has steps {sealed or 'none'}")
    problem = manifest.verify(directory / str(step))
    if problem is not None:
        raise ConfigError(f"restore_checkpoint: checkpoint {directory / str(step)} is damaged ({problem})")
    return int(step)


def _check_structure(saved: dict[str, list], expected: dict[str, list], where: Path) -> None:
    """Raises a ConfigError naming the first leaf whose presence, shape or dtype differs."""
    show = lambda leaf: f"{tuple(leaf[0])} {leaf[1]}"  # noqa: E731
    for name in [*expected, *(n for n in saved if n not in expected)]:
        if name not in saved:
            raise ConfigError(f"{name}: checkpoint {where} has no such leaf, `like` has {show(expected[name])}")
        if name not in expected:
            raise ConfigError(f"{name}: checkpoint {where} has {show(saved[name])}, `like` has no such leaf")
        if saved[name] != expected[name]:
            raise ConfigError(f"{name}: checkpoint has {show(saved[name])}, `like` has {show(expected[name])} "
                              f"(checkpoint {where})")


def restore_checkpoint(directory, like: TrainState, *, step: Optional[int] = None) -> tuple[TrainState, dict[str, Any]]:
    """Reads a checkpoint written by ``save_checkpoint`` into the structure of ``like``.

    Args:
      directory: the folder given to ``save_checkpoint``.
      like: a ``TrainState`` of the expected structure, shapes, dtypes and shardings (e.g.
        the freshly initialised state); its values are not read.
      step: the checkpoint to read; None: the latest complete one.

    Returns:
      ``(train_state, extra)``: the state bit for bit as saved (the key in ``like``'s kind:
      typed with its implementation, or raw) and the ``extra`` dict (through JSON: tuples
      come back as lists).

    Raises:
      ConfigError: no such (complete) checkpoint, a damaged one, or a structure that differs
        from ``like``'s, naming the first differing leaf, e.g. ``"params/dense_0/w:
        checkpoint has (64, 128) float32, `like` has (64, 256) float32"``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"restore_checkpoint: {directory} is not a directory of checkpoints")
    ocp, manager = _manager(directory)
    try:
        step = _pick_step(manager, directory, step)
        where = directory / str(step)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ConfigError(f"restore_checkpoint: {where} was not written by fntrain.save_checkpoint")
        tree = _saveable(like)
        _check_structure(meta["leaves"], _leaves(tree), where)
        if meta.get("key_impl") != _key_impl(like.key):
            raise ConfigError(f"key: checkpoint has a {meta.get('key_impl') or 'raw uint32'} key, `like` has "
                              f"{_key_impl(like.key) or 'a raw uint32 key'} (checkpoint {where})")
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(tree))))["state"]
    finally:
        manager.close()
    key = jax.random.wrap_key_data(state["key"], impl=jax.random.key_impl(like.key)) if _typed(like.key) else state["key"]
    ts = TrainState(step=state["step"], params=state["params"], model_state=state["model_state"],
                    opt_state=state["opt_state"], key=key)
    return ts, meta.get("extra", {})
