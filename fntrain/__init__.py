"""fntrain: a functional training toolkit for JAX."""

from fntrain import losses, metrics, nn
from fntrain.state import TrainState
from fntrain.step import make_eval_step, make_train_step, supervised_loss

__version__ = "0.1.0"

__all__ = [
    "TrainState",
    "losses",
    "make_eval_step",
    "make_train_step",
    "metrics",
    "nn",
    "supervised_loss",
]
