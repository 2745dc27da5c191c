"""fntrain: a functional training toolkit for JAX."""

from fntrain import malloc as _malloc

_malloc.tune()  # before JAX allocates anything, see fntrain/malloc.py

from fntrain import data, losses, metrics, nn
from fntrain.config import Config, load_config
from fntrain.errors import ConfigError
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
from fntrain.step import make_eval_step, make_train_step, supervised_loss

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "TrainResult",
    "TrainState",
    "data",
    "load_config",
    "losses",
    "make_eval_step",
    "make_train_step",
    "metrics",
    "nn",
    "register_callback",
    "register_dataset",
    "register_loss",
    "register_metric",
    "register_model",
    "register_objective",
    "supervised_loss",
    "train",
]
