"""fntrain: a functional training toolkit for JAX."""

from fntrain import malloc as _malloc

_malloc.tune()  # before JAX allocates anything, see fntrain/malloc.py

from fntrain import callbacks, data, losses, metrics, nn
from fntrain.callbacks import CallbackError, RunInfo
from fntrain.config import Config, load_config
from fntrain.errors import ConfigError
from fntrain.evaluation import evaluate
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
from fntrain.step import fused, jit_step, make_eval_step, make_step, make_train_step, on_rows, skipping_nonfinite, supervised_loss

__version__ = "0.1.0"

__all__ = [
    "CallbackError",
    "Config",
    "ConfigError",
    "RunInfo",
    "TrainResult",
    "TrainState",
    "callbacks",
    "data",
    "evaluate",
    "fused",
    "jit_step",
    "load_config",
    "losses",
    "make_eval_step",
    "make_step",
    "make_train_step",
    "metrics",
    "nn",
    "on_rows",
    "register_callback",
    "register_dataset",
    "register_loss",
    "register_metric",
    "register_model",
    "register_objective",
    "skipping_nonfinite",
    "supervised_loss",
    "train",
]
