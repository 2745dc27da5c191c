"""The top-level ``Config`` and the sections without variants.

Every field is documented here or in the section's own module, once; ``docs/CONFIG.md`` is
generated from these descriptions (``python scripts/config_reference.py --write``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, Strict, model_validator

from fntrain.config.base import NonNegativeFloat, NonNegativeInt, PositiveInt, _Section
from fntrain.config.data import DataConfig
from fntrain.config.loss import LossConfig, SoftmaxCrossEntropyLoss
from fntrain.config.model import ModelConfig
from fntrain.config.optim import AdamOptimizer, OptimizerConfig

# --------------------------------------------------------------------------- loop and log


class LoopConfig(_Section):
    kind: Literal["epochs", "steps"] = Field("epochs", description="epochs: `num_epochs` passes over the data; steps: `num_steps` steps.")
    num_epochs: Optional[PositiveInt] = Field(None, description="kind epochs: passes over the training split.")
    num_steps: Optional[PositiveInt] = Field(None, description="kind steps: training steps over the repeating stream.")
    eval_every_epochs: Optional[PositiveInt] = Field(1, description="kind epochs: evaluate on val every N epochs; null: only at the end.")
    eval_every_steps: Optional[PositiveInt] = Field(None, description="Evaluate on val every N steps (either kind); null: off.")
    steps_per_dispatch: PositiveInt = Field(
        1, description="Fuse up to N steps into one `lax.scan` dispatch (results equal N single steps)."
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A non-finite loss or gradient: stop (exit 3, last good checkpoint kept) or skip that "
        "update and count it (`nonfinite` in metrics.jsonl).",
    )

    @model_validator(mode="after")
    def _length_given(self):
        if self.kind == "epochs" and self.num_epochs is None:
            raise ValueError("num_epochs: required when kind is 'epochs'")
        if self.kind == "steps" and self.num_steps is None:
            raise ValueError("num_steps: required when kind is 'steps'")
        return self


class LogConfig(_Section):
    every_steps: PositiveInt = Field(50, description="Write mean training metrics every N steps.")
    grad_norm: bool = Field(
        False,
        description="Also log `grad_norm`, the global L2 norm of the gradients of each log step (computed on "
        "that step only; it still slows a small MLP's steps by a few percent, so it is opt-in).",
    )
    layer_stats: bool = Field(
        False,
        description="Also log per-layer gradient norms and activation statistics (on the batch of each log "
        "step; serial networks only); off costs nothing.",
    )
    progress: Literal["auto", "bar", "lines", "none"] = Field(
        "auto", description="auto: a progress bar on a terminal, plain lines otherwise."
    )


class CheckpointConfig(_Section):
    every_steps: Optional[PositiveInt] = Field(
        1000, description="Checkpoint every N steps (also at the end, on early stop and on SIGTERM/SIGINT); null: only then."
    )
    keep: PositiveInt = Field(3, description="How many of the latest checkpoints to keep.")
    keep_best: bool = Field(
        False, description="Also keep the checkpoint with the best validation `early_stopping.metric` (on when patience is set)."
    )
    resume: bool = Field(False, description="Resume from the latest checkpoint in output_dir if there is one (like --resume).")


class EarlyStoppingConfig(_Section):
    metric: str = Field("loss", description="Validation metric to watch (also for checkpoint.keep_best).")
    mode: Literal["min", "max"] = Field("min", description="Whether smaller or larger `metric` is better.")
    patience: Optional[PositiveInt] = Field(None, description="Stop after N evaluations without improvement; null: never stop early.")
    min_delta: NonNegativeFloat = Field(0.0, description="Smallest change that counts as an improvement.")
    restore_best: bool = Field(
        True, description="With patience or keep_best: end with the best parameters (test metrics and params.npz use them)."
    )


class ParallelConfig(_Section):
    mode: Literal["data", "fsdp"] = Field(
        "data",
        description="data: batches split over devices, parameters replicated; fsdp: parameters and optimizer "
        "state split over devices too.",
    )
    num_devices: Optional[PositiveInt] = Field(None, description="Devices to use; null: all of them (on every host).")
    distributed: bool = Field(
        False,
        description="Start `jax.distributed` (multi-host); the three keys below, or null to let JAX detect the cluster.",
    )
    coordinator_address: Optional[str] = Field(None, description="distributed: `host:port` of process 0.")
    num_processes: Optional[PositiveInt] = Field(None, description="distributed: number of processes.")
    process_id: Optional[NonNegativeInt] = Field(None, description="distributed: this process's index.")


# --------------------------------------------------------------------------- the whole config


class Config(_Section):
    seed: Annotated[int, Strict(), Field(ge=0, lt=2**32)] = Field(
        0, description="Seed of every random choice: initialisation, splits, shuffling, dropout."
    )
    output_dir: str = Field(description="Run directory; null in a file: `runs/<config file name>`.")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Compute dtype of the network. bfloat16: mixed precision, with float32 master parameters, "
        "gradients, optimizer state, normalisation statistics and loss (`fntrain.nn.mixed_precision`).",
    )
    data: DataConfig = Field(description="Dataset, splits and batching; `data.name` picks the source.")
    model: ModelConfig = Field(description="Network; `model.name` picks the builder.")
    loss: LossConfig = Field(
        SoftmaxCrossEntropyLoss(name="softmax_cross_entropy"), description="Loss function; `loss.name` picks it."
    )
    optimizer: OptimizerConfig = Field(AdamOptimizer(name="adam"), description="Optimizer and schedule; `optimizer.name` picks it.")
    loop: LoopConfig = Field(description="The outer loop.")
    log: LogConfig = Field(LogConfig(), description="Logging.")
    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="Checkpoints and resuming.")
    early_stopping: EarlyStoppingConfig = Field(EarlyStoppingConfig(), description="Early stopping on a validation metric.")
    parallel: ParallelConfig = Field(ParallelConfig(), description="Devices, sharding and multi-host.")
