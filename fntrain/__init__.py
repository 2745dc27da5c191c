"""fntrain: a functional training toolkit for JAX.

The public names are imported on first use (PEP 562), so ``import fntrain`` is
instant and the ``fntrain`` command can install its signal handlers before JAX is
imported: ``import fntrain as ft; ft.train(...)`` works as if they were imported here.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from fntrain import malloc as _malloc

_malloc.tune()  # before JAX allocates anything, see fntrain/malloc.py

__version__ = "0.1.0"

# Public name -> the module that defines it (a module's own name: the module itself).
_EXPORTS = {
    "CallbackError": "fntrain.callbacks",
    "Config": "fntrain.config",
    "ConfigError": "fntrain.errors",
    "RunInfo": "fntrain.callbacks",
    "TrainResult": "fntrain.loop",
    "TrainState": "fntrain.state",
    "TrainedRun": "fntrain.trained",
    "callbacks": "fntrain.callbacks",
    "data": "fntrain.data",
    "evaluate": "fntrain.evaluation",
    "export_run": "fntrain.exporting",
    "fused": "fntrain.step",
    "jit_step": "fntrain.step",
    "load_config": "fntrain.config",
    "load_run": "fntrain.trained",
    "losses": "fntrain.losses",
    "make_eval_step": "fntrain.step",
    "make_step": "fntrain.step",
    "make_train_step": "fntrain.step",
    "metrics": "fntrain.metrics",
    "nn": "fntrain.nn",
    "on_rows": "fntrain.step",
    "register_callback": "fntrain.registry",
    "register_dataset": "fntrain.registry",
    "register_loss": "fntrain.registry",
    "register_metric": "fntrain.registry",
    "register_model": "fntrain.registry",
    "register_objective": "fntrain.registry",
    "restore_checkpoint": "fntrain.checkpoint_api",
    "save_checkpoint": "fntrain.checkpoint_api",
    "skipping_nonfinite": "fntrain.step",
    "supervised_loss": "fntrain.step",
    "train": "fntrain.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Imports a public name, or a submodule (``fntrain.loop``), on first access."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module_name = f"{__name__}.{name}"
    module = importlib.import_module(module_name)
    value = module if module_name == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from fntrain import callbacks, data, losses, metrics, nn
    from fntrain.callbacks import CallbackError, RunInfo
    from fntrain.checkpoint_api import restore_checkpoint, save_checkpoint
    from fntrain.config import Config, load_config
    from fntrain.errors import ConfigError
    from fntrain.evaluation import evaluate
    from fntrain.exporting import export_run
    from fntrain.loop import TrainResult, train
    from fntrain.registry import (
        register_callback,
        register_dataset,
        register_loss,
        register_metric,
        register_model,
        register_objective,
    )
    from fntrain.state import TrainState
    from fntrain.step import (
        fused, jit_step, make_eval_step, make_step, make_train_step, on_rows, skipping_nonfinite, supervised_loss,
    )
    from fntrain.trained import TrainedRun, load_run
