"""The top-level ``Config`` and the sections without variants.

Every field is documented here or in the section's own module, once; ``docs/CONFIG.md`` is
generated from these descriptions (``python scripts/config_reference.py --write``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, Field, Strict, ValidationInfo, field_validator, model_validator

from fntrain import registry
from fntrain.config.base import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, _Custom, _Section
from fntrain.config.data import DataConfig
from fntrain.config.loss import LossConfig, SoftmaxCrossEntropyLoss
from fntrain.config.model import ModelConfig
from fntrain.config.optim import AdamOptimizer, OptimizerConfig
from fntrain.config.population import MAX_MEMBERS, PopulationConfig
from fntrain.limits import quote

# --------------------------------------------------------------------------- loop and log


class LoopConfig(_Section):
    kind: Literal["epochs", "steps"] = Field("epochs", description="epochs: `num_epochs` passes over the data; steps: `num_steps` steps.")
    num_epochs: Optional[PositiveInt] = Field(None, description="kind epochs: passes over the training split.")
    num_steps: Optional[PositiveInt] = Field(None, description="kind steps: training steps over the repeating stream.")
    eval_every_epochs: Optional[PositiveInt] = Field(1, description="kind epochs: evaluate on val every N epochs; null: only at the end.")
    eval_every_steps: Optional[PositiveInt] = Field(None, description="Evaluate on val every N steps (either kind); null: off.")
    steps_per_dispatch: Union[PositiveInt, Literal["auto"]] = Field(
        "auto",
        description="Fuse up to N steps into one `lax.scan` dispatch (results equal N single steps). auto: "
        "chosen by timing the run's own log windows (single steps, then fused dispatches of the largest "
        "K <= 16 dividing `log.every_steps` if the step is short and the run long enough to pay for a second "
        "compilation, kept only if faster; reported in summary.json); one process on one device with "
        "`data.on_device`, single steps elsewhere.",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A non-finite loss or gradient: stop (exit 3, last good checkpoint kept) or skip that "
        "update and count it (`nonfinite` in metrics.jsonl).",
    )

    @property
    def fixed_dispatch_size(self) -> int:
        """``steps_per_dispatch`` where it is not chosen by timing: ``auto`` is 1."""
        return 1 if self.steps_per_dispatch == "auto" else self.steps_per_dispatch

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
    tensorboard: Optional[bool] = Field(
        None,
        description="Write TensorBoard event files under `<output_dir>/tensorboard/` (every metrics.jsonl value, "
        "the config as text and hyperparameters, the model summary); null: when tensorboardX is installed.",
    )
    plot: bool = Field(True, description="Write the learning curves to `<output_dir>/curves.png` when the run finishes.")


class CheckpointConfig(_Section):
    every_steps: Optional[PositiveInt] = Field(
        1000, description="Checkpoint every N steps (also at the end, on early stop and on SIGTERM/SIGINT); null: only then."
    )
    every_minutes: Optional[PositiveFloat] = Field(
        10.0,
        description="Also checkpoint when N minutes have passed since the last checkpoint (after the dispatch "
        "that crosses it; results are unchanged), so a crash loses minutes, not hours; null: off.",
    )
    keep: PositiveInt = Field(3, description="How many of the latest complete checkpoints to keep.")
    keep_best: bool = Field(
        False, description="Also keep the checkpoint with the best validation `early_stopping.metric` (on when patience is set)."
    )
    resume: bool = Field(
        False,
        description="Resume from the latest complete checkpoint in output_dir, or start afresh there if it has "
        "none (like --resume).",
    )


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


# --------------------------------------------------------------------------- objective, metrics, callbacks


class ObjectiveConfig(_Custom):
    """``fn(net, **kwargs)`` returns ``loss_fn(params, model_state, batch, key) -> (loss, (model_state, metrics))``."""

    kind = "objective"

    name: str = Field(description="`module.path:function`, or a name registered with `fntrain.register_objective`.")


class CallbackConfig(_Custom):
    """``factory(**kwargs)`` returns a callback for the training loop."""

    kind = "callback"

    name: str = Field(description="`module.path:factory`, or a name registered with `fntrain.register_callback`.")


def _known_metric(name: str, info: ValidationInfo) -> str:
    from fntrain.metrics import METRICS  # lazily: it imports jax, and the list grows there

    registry.lookup(name, "metric", METRICS, module_dir=info.data.get("metrics_module_dir"))
    return name


MetricName = Annotated[str, AfterValidator(_known_metric)]

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
        SoftmaxCrossEntropyLoss(name="softmax_cross_entropy"), description="Loss function; `loss.name` picks it. null: the default (none with an `objective`)."
    )
    objective: Optional[ObjectiveConfig] = Field(
        None,
        description="A training objective in place of `loss`: `fn(net, **kwargs)` returns `loss_fn(params, "
        "model_state, batch, key) -> (loss, (model_state, metrics))`; `name` is `module.path:function` or a name "
        "registered with `fntrain.register_objective`. null: `loss` on (inputs, targets) batches. Set either "
        "`objective` or a `loss` section, and no `metrics` (the objective returns its own).",
    )
    # Declared before `metrics`, whose validator reads it (pydantic validates fields in order).
    metrics_module_dir: Optional[str] = Field(
        None,
        description="The folder the modules of `module.path:function` names in `metrics` are imported from, "
        "as `module_dir` is for a section's `name`; `fntrain train` fills it in.",
    )
    metrics: Optional[tuple[MetricName, ...]] = Field(
        None,
        description="Metrics to report, as a list of names: built-in (`fntrain.metrics.METRICS`: accuracy, "
        "top_5_accuracy, binary_accuracy, mean_absolute_error, ...), registered with `fntrain.register_metric`, "
        "or `module.path:function`; each is logged under its name. null: the loss's own (accuracy for "
        "softmax_cross_entropy and sigmoid_binary_cross_entropy, none for the others).",
    )
    optimizer: OptimizerConfig = Field(AdamOptimizer(name="adam"), description="Optimizer and schedule; `optimizer.name` picks it.")
    loop: LoopConfig = Field(description="The outer loop.")
    log: LogConfig = Field(LogConfig(), description="Logging.")
    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="Checkpoints and resuming.")
    early_stopping: EarlyStoppingConfig = Field(EarlyStoppingConfig(), description="Early stopping on a validation metric.")
    parallel: ParallelConfig = Field(ParallelConfig(), description="Devices, sharding and multi-host.")
    population: Optional[PopulationConfig] = Field(
        None,
        description="Train many seeds and hyperparameters at once, in one compiled step (`jax.vmap` over the "
        "train state): `{size: N, grid: {dotted.key: [values]}}`; members are grid x seeds (docs/POPULATION.md). "
        "null: one run.",
    )
    callbacks: tuple[CallbackConfig, ...] = Field(
        (),
        description="Callbacks for the training loop, each `{name: module.path:factory or a registered name, "
        "kwargs: {...}}` (registered with `fntrain.register_callback`); `factory(**kwargs)` returns the callback.",
    )

    @model_validator(mode="before")
    @classmethod
    def _null_loss_is_no_loss_section(cls, raw):
        # `loss: null` (or the override loss=null) takes a file's loss section away, e.g. for an objective.
        if isinstance(raw, dict) and "loss" in raw and raw["loss"] is None:
            raw = {k: v for k, v in raw.items() if k != "loss"}
        return raw

    @field_validator("metrics")
    @classmethod
    def _each_metric_once(cls, v):
        if v is not None and len(set(v)) != len(v):
            twice = sorted({m for m in v if v.count(m) > 1})
            raise ValueError(f"{', '.join(map(quote, twice[:5]))} listed twice; list each metric once")
        return v

    @model_validator(mode="after")
    def _objective_replaces_loss_and_metrics(self):
        if self.objective is not None and "loss" in self.model_fields_set:
            raise ValueError(
                "objective: an objective computes its own loss, so set either objective or a loss section, not both "
                "(the override loss=null removes a file's loss section)"
            )
        if self.objective is not None and self.metrics is not None:
            raise ValueError(
                "metrics: an objective returns its own metrics, so set either objective or metrics, not both"
            )
        return self

    @model_validator(mode="after")
    def _microbatches_divide_the_batch(self):
        n, batch_size = self.optimizer.accumulate_steps, self.data.batch_size
        if batch_size % n:
            raise ValueError(
                f"optimizer.accumulate_steps ({n}) must divide data.batch_size ({batch_size}) into equal "
                f"microbatches; choose a batch size that is a multiple of {n}"
            )
        return self

    @model_validator(mode="after")
    def _population_fits(self):
        if self.population is not None and self.population.num_members() > MAX_MEMBERS:
            raise ValueError(
                f"population: {self.population.num_members()} members, more than {MAX_MEMBERS}; use a smaller grid or size"
            )
        return self

    @property
    def metrics_to_report(self) -> dict[str, str]:
        """``{name in metrics.jsonl: metric name}``: ``metrics`` if set, else the loss's defaults.

        Empty with an ``objective`` (its ``loss_fn`` returns its own metrics).
        """
        if self.objective is not None:
            return {}
        if self.metrics is not None:
            return {name: name for name in self.metrics}
        return dict(self.loss.default_metrics)
