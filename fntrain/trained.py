"""A finished run loaded back: its config, network and parameters, and batched predictions.

``load_run(run_dir)`` reads what the loop wrote (``config.yaml``, ``params.npz``,
``summary.json``) and rebuilds the network from the config with the same builder the run
used (:func:`fntrain.experiment.build_network`), sized as ``summary.json`` records; ``params.npz``
(never unpickled) then fills parameters and model state, batch-norm statistics and the
``target_scale`` constants of ``data.standardize_targets`` included, so predictions are in
the targets' original units, as the run's evaluation reports them.

Example:
  >>> run = fntrain.load_run("runs/digits_mlp")
  >>> logits = run.predict(x)                     # x [N, 8, 8, 1] -> [N, 10], evaluation mode
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from fntrain import config as cfg
from fntrain import nn
from fntrain.errors import ConfigError
from fntrain.rundir import CONFIG, MEMBERS_DIR, PARAMS, SUMMARY, RunDir

__all__ = ["TrainedRun", "load_run"]


def _head(config: cfg.Config) -> str:
    """What the outputs are: ``"classes"`` (softmax logits), ``"binary"`` (sigmoid logits) or
    ``"outputs"`` (regression values, or an objective's own outputs)."""
    if config.objective is not None:
        return "outputs"
    return {"classes": "classes", "binary": "binary"}.get(config.loss.targets, "outputs")


class TrainedRun:
    """A trained network with its parameters, ready to predict.

    Attributes:
      path: the run directory.
      config: the run's resolved config (``config.yaml``).
      net: the network, ``net.apply(params, model_state, x, train=False, key=None)``.
      params, model_state: what ``params.npz`` holds (``summary["params"]`` says whether the
        parameters are the raw ones or their EMA).
      summary: ``summary.json``.
      input_shape: one example's shape, e.g. ``(8, 8, 1)``; input_dtype: its dtype.
      head: ``"classes"``, ``"binary"`` or ``"outputs"`` (see ``prediction_arrays``).
    """

    def __init__(self, path: Path, config: cfg.Config, net: nn.Module, params, model_state, summary: dict,
                 example: jax.ShapeDtypeStruct):
        self.path, self.config, self.net, self.summary = path, config, net, summary
        self.params, self.model_state = params, model_state
        self.input_shape, self.input_dtype = tuple(example.shape), np.dtype(example.dtype)
        self.head = _head(config)
        self._apply = jax.jit(lambda p, s, x: net.apply(p, s, x, train=False, key=None)[0])

    def forward(self, x: jax.Array) -> jax.Array:
        """The evaluation-mode forward pass ``[B, *input_shape] -> [B, ...]``, parameters
        closed over (what ``fntrain.export_run`` serialises)."""
        return self.net.apply(self.params, self.model_state, x, train=False, key=None)[0]

    def output_row(self) -> jax.ShapeDtypeStruct:
        """One example's output shape and dtype, found without running the network."""
        out = nn.output_shape(self.net, self.params, self.model_state,
                              jax.ShapeDtypeStruct((1, *self.input_shape), self.input_dtype))
        return jax.ShapeDtypeStruct(out.shape[1:], out.dtype)

    def check_inputs(self, x, where: str = "inputs") -> np.ndarray:
        """``x`` as an array ``[N, *input_shape]`` of ``input_dtype``.

        Raises:
          ConfigError: the rows have another shape, or values the inputs cannot hold (e.g.
            fractions for token ids), e.g. ``"inputs: expected rows of shape (8, 8, 1), got (63,)"``.
        """
        x = np.asarray(x)
        if x.ndim == 0 or tuple(x.shape[1:]) != self.input_shape:
            got = "a scalar" if x.ndim == 0 else str(tuple(x.shape[1:]))
            size = f" ({math.prod(self.input_shape)} values each)" if len(self.input_shape) > 1 else ""
            raise ConfigError(f"{where}: expected rows of shape {self.input_shape}{size}, got {got}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ConfigError(f"{where}: expected numbers ({self.input_dtype}), got {x.dtype}")
        if np.issubdtype(self.input_dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
            if x.size and not np.all(np.isfinite(x) & (x == np.round(x))):
                raise ConfigError(f"{where}: expected integer ids ({self.input_dtype}), got fractional values")
        return x.astype(self.input_dtype, copy=False)

    def predict(self, x, *, batch_size: Optional[int] = None) -> np.ndarray:
        """The network's outputs on ``x`` in evaluation mode, a batch at a time.

        Every batch has ``batch_size`` rows (the last padded with zeros, whose outputs are
        dropped), so the forward pass compiles once whatever ``N``.

        Args:
          x: ``[N, *input_shape]``, any ``N >= 0``; inputs as the run's data gave them
            (``fntrain.data.load_splits``: with ``data.standardize`` already standardized).
          batch_size: rows per batch; None: the run's evaluation batch size.

        Returns:
          ``[N, ...]`` outputs: logits for a classifier, values in the targets' original
          units for a regression.

        Raises:
          ConfigError: ``x`` does not fit the network (see ``check_inputs``), or a bad batch_size.
        """
        x = self.check_inputs(x)
        size = batch_size if batch_size is not None else self.config.data.eval_batch_size or 4 * self.config.data.batch_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ConfigError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        row = self.output_row()
        outputs = []
        for start in range(0, len(x), int(size)):
            batch = x[start:start + int(size)]
            n = len(batch)
            if n < size:
                batch = np.concatenate([batch, np.zeros((int(size) - n, *self.input_shape), batch.dtype)])
            outputs.append(np.asarray(self._apply(self.params, self.model_state, batch))[:n])
        return np.concatenate(outputs) if outputs else np.zeros((0, *row.shape), row.dtype)


def _read_config(path: Path) -> cfg.Config:
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(f"run directory {str(path)!r} {what}; expected a run's output_dir (e.g. runs/digits_mlp)")
    if not (path / CONFIG).is_file():
        raise ConfigError(f"{str(path)!r} is not an fntrain run: it has no {CONFIG}; expected a run's output_dir")
    if not (path / PARAMS).is_file():
        raise ConfigError(f"{str(path)!r} has no {PARAMS}: the run has not finished; finish it with "
                          f"fntrain train {path / CONFIG} --resume")
    return cfg.load_config(path / CONFIG)


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads((path / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def load_run(run_dir, *, member: Optional[int] = None) -> TrainedRun:
    """Loads a finished run's network and parameters (see the module docstring).

    The network is sized by ``summary.json``'s ``network`` entry; a run written before it
    existed is sized by its data, which must then still be readable.

    Args:
      member: a population's member (``members/params_<member>.npz``); None: ``params.npz``,
        which for a population is its best member's.

    Raises:
      ConfigError: no such directory, not a run, a damaged ``params.npz``, parameters
        that do not match the config's network, or no such member; one line each.
    """
    from fntrain.experiment import build_network, seed_keys

    path = Path(run_dir)
    config = _read_config(path)
    summary = _read_summary(path)
    shapes = _network_shapes(path, config, summary)
    net = build_network(config, shapes)
    example = jax.ShapeDtypeStruct(tuple(shapes["input_shape"]), np.dtype(shapes["input_dtype"]))
    x = jax.ShapeDtypeStruct((2, *example.shape), example.dtype)
    params_like, state_like = jax.eval_shape(net.init, seed_keys(config.seed)["init"], x)
    try:
        params, model_state = RunDir(path).load_params(params_like, state_like, _params_file(path, summary, member))
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(f"{str(path / PARAMS)!r} is damaged ({detail}); train the run again") from None
    params, model_state = jax.device_put((params, model_state))
    return TrainedRun(path, config, net, params, model_state, summary, example)


def _params_file(path: Path, summary: dict[str, Any], member: Optional[int]) -> str:
    """``params.npz``, or the file of population member ``member``."""
    if member is None:
        return PARAMS
    count = len(summary.get("population", {}).get("members", []))
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < count:
        have = f"members 0..{count - 1}" if count else "no members (it is not a population)"
        raise ConfigError(f"member: {member!r} is not a member of {str(path)!r}, which has {have}")
    return f"{MEMBERS_DIR}/params_{member}.npz"


def _network_shapes(path: Path, config: cfg.Config, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``'s ``network`` entry, checked; from the run's data when there is none."""
    from fntrain.experiment import build_splits, network_shapes

    shapes = summary.get("network")
    if shapes is None:
        return network_shapes(config, build_splits(config))
    try:
        ok = (isinstance(shapes, dict) and isinstance(shapes["num_outputs"], int) and shapes["num_outputs"] >= 1
              and all(isinstance(d, int) and d >= 0 for d in [*shapes["input_shape"], *shapes["target_shape"]]))
        np.dtype(shapes["input_dtype"])
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{str(path / SUMMARY)!r}: its 'network' entry is damaged; expected input_shape, "
                          f"input_dtype, num_outputs and target_shape as the run wrote them")
    return shapes
