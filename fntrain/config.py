"""The configuration schema, YAML loading and ``dotted.key=value`` overrides.

Every field is documented here, once; the README's reference is generated from
this schema (``python scripts/config_reference.py``) and a test keeps them in sync.
Configs are frozen pydantic models: immutable and hashable, so a config can be
closed over or passed to ``jax.jit`` as a static argument.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from fntrain.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrozenMapping(tuple):
    """A mapping frozen into sorted ``(key, value)`` pairs, so that configs stay hashable."""

    def thaw(self) -> dict:
        return {k: _thaw(v) for k, v in self}


def _freeze(value):
    """Dicts to FrozenMapping and lists to tuples, recursively."""
    if isinstance(value, dict):
        return FrozenMapping(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    """The inverse of ``_freeze``: what the user wrote, as plain dicts and lists."""
    if isinstance(value, FrozenMapping):
        return value.thaw()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _freeze_mapping(value) -> FrozenMapping:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of argument names to values, got {type(value).__name__}")
    return _freeze(value)


class _Custom(_Section):
    """A component named ``module.path:function``, registered by name, or built in."""

    kind: ClassVar[str]
    builtins: ClassVar[tuple[str, ...]] = ()

    name: str = Field(description="`module.path:function`, or a name registered with `fntrain.register_*`.")
    kwargs: Any = Field(default=FrozenMapping(), description="Keyword arguments for the function (a mapping).")

    @field_validator("kwargs", mode="before")
    @classmethod
    def _freeze_kwargs(cls, v):
        return _freeze_mapping(v)

    @field_validator("name")
    @classmethod
    def _known_name(cls, v):
        from fntrain import registry

        if v not in cls.builtins:
            registry.lookup(v, cls.kind, dict.fromkeys(cls.builtins))
        return v

    @property
    def kwargs_dict(self) -> dict[str, Any]:
        return self.kwargs.thaw()


def _union(builtins: dict[str, type], custom: type, what: str):
    """A union of section classes chosen by their ``name`` field; unknown names go to ``custom``."""

    def pick(v):
        name = v.get("name") if isinstance(v, dict) else getattr(v, "name", None)
        if name in builtins:
            return name
        return "custom" if isinstance(name, str) else None

    members = [Annotated[cls, Tag(tag)] for tag, cls in builtins.items()] + [Annotated[custom, Tag("custom")]]
    return Annotated[Union[tuple(members)], Discriminator(pick, custom_error_type="missing_name",
                                                          custom_error_message=f"{what} needs a `name`")]


_UNION_TAGS: set[str] = {"custom"}


# --------------------------------------------------------------------------- data

# Strict: `true` is not the integer 1 here.
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
Fraction = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]


class _Batching(_Section):
    batch_size: PositiveInt = Field(64, description="Examples per training step.")
    eval_batch_size: Optional[PositiveInt] = Field(None, description="Examples per evaluation batch; null: 4 x batch_size.")
    shuffle: bool = Field(True, description="Reshuffle the training split every epoch (from `seed`).")
    drop_last: bool = Field(False, description="Drop each epoch's final partial batch.")
    on_device: Optional[bool] = Field(
        None,
        description="Keep the training split in device memory and gather each batch there, which saves a "
        "host-to-device copy per step; null: when one process trains and the split takes at most 1 GiB.",
    )


class _DataCommon(_Batching):
    val_fraction: Fraction = Field(0.1, description="Fraction of the examples held out for validation.")
    test_fraction: Fraction = Field(0.1, description="Fraction of the examples held out for testing.")
    standardize: bool = Field(False, description="Standardize inputs per feature with training-split statistics.")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("test_fraction: val_fraction + test_fraction must be below 1 so that training data remains")
        return self


class DigitsData(_DataCommon):
    name: Literal["digits"] = Field(description="scikit-learn's embedded 8x8 digits: x [1797, 8, 8, 1], 10 classes.")


class ClassificationData(_DataCommon):
    name: Literal["classification"] = Field(description="Generated Gaussian clusters, one per class.")
    num_examples: PositiveInt = Field(1000, description="Examples generated.")
    num_features: PositiveInt = Field(20, description="Input features.")
    num_classes: Annotated[int, Strict(), Field(ge=2)] = Field(3, description="Classes.")
    class_sep: Annotated[float, Strict(), Field(gt=0)] = Field(2.0, description="Spread of the class centres.")


class RegressionData(_DataCommon):
    name: Literal["regression"] = Field(description="Generated near-linear regression: y = x W + b + noise.")
    num_examples: PositiveInt = Field(1000, description="Examples generated.")
    num_features: PositiveInt = Field(8, description="Input features.")
    num_outputs: PositiveInt = Field(1, description="Regression targets per example.")
    noise: Annotated[float, Strict(), Field(ge=0)] = Field(0.1, description="Standard deviation of the additive noise.")


class NpzData(_DataCommon):
    name: Literal["npz"] = Field(description="Arrays from a NumPy `.npz` file (loaded without pickle).")
    path: str = Field(description="Path of the `.npz` file.")
    x_key: str = Field("x", description="Array name of the inputs.")
    y_key: str = Field("y", description="Array name of the targets.")


class IdxData(_DataCommon):
    name: Literal["idx"] = Field(description="MNIST-format IDX files, gzipped or not.")
    images_path: str = Field(description="Path of the IDX images file.")
    labels_path: str = Field(description="Path of the IDX labels file.")


class CsvData(_DataCommon):
    name: Literal["csv"] = Field(description="A CSV file of numeric columns.")
    path: str = Field(description="Path of the CSV file.")
    target_column: Union[int, str] = Field(-1, description="Target column: an index or a header name.")
    target_dtype: Literal["int", "float"] = Field("int", description="int: class labels; float: regression targets.")
    header: Optional[bool] = Field(None, description="Whether the first row is a header; null: detect.")
    delimiter: str = Field(",", description="Field separator.")


class CharLMData(_Batching):
    name: Literal["charlm"] = Field(
        description="Character-level language modelling on the Python docs text shipped in `pydoc_data`: "
        "x, y [N, seq_len] int (y is x shifted by one). The batching keys apply; there is no test split "
        "and no standardize."
    )
    val_fraction: Fraction = Field(0.1, description="The text's last fraction, held out for validation.")
    seq_len: PositiveInt = Field(128, description="Characters per training window.")
    stride: Optional[PositiveInt] = Field(None, description="Characters between window starts; null: seq_len.")
    max_chars: Optional[PositiveInt] = Field(None, description="Use only the first N characters; null: all ~465k.")


_DATA = {
    "digits": DigitsData,
    "charlm": CharLMData,
    "classification": ClassificationData,
    "regression": RegressionData,
    "npz": NpzData,
    "idx": IdxData,
    "csv": CsvData,
}


class CustomData(_DataCommon, _Custom):
    """``fn(**kwargs)`` returns ``fntrain.data.Arrays`` (or an ``(x, y)`` pair)."""

    kind = "dataset"
    builtins = tuple(_DATA)


DataConfig = _union(_DATA, CustomData, "data")

# --------------------------------------------------------------------------- model

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "softplus", "identity"]
Norm = Optional[Literal["batch", "layer"]]


class MlpModel(_Section):
    name: Literal["mlp"] = Field(description="Multi-layer perceptron on flattened inputs.")
    hidden_sizes: tuple[PositiveInt, ...] = Field((128,), description="Widths of the hidden layers.")
    num_outputs: Optional[PositiveInt] = Field(None, description="Output width; null: inferred from the data.")
    activation: Activation = Field("relu", description="Hidden activation.")
    dropout_rate: Fraction = Field(0.0, description="Dropout probability after each hidden layer.")
    norm: Norm = Field(None, description="Normalisation after each hidden dense layer: batch, layer or null.")


class CnnModel(_Section):
    name: Literal["cnn"] = Field(description="Small CNN for NHWC images: conv blocks then an MLP head.")
    channels: tuple[PositiveInt, ...] = Field((32, 64), description="Channels of each conv block.")
    kernel_size: PositiveInt = Field(3, description="Square kernel size.")
    pool: Optional[Literal["max", "avg"]] = Field("max", description="2x2 pooling after each block, or null.")
    hidden_sizes: tuple[PositiveInt, ...] = Field((128,), description="Widths of the dense head.")
    num_outputs: Optional[PositiveInt] = Field(None, description="Output width; null: inferred from the data.")
    activation: Activation = Field("relu", description="Activation.")
    dropout_rate: Fraction = Field(0.0, description="Dropout probability in the head.")
    norm: Norm = Field(None, description="Normalisation after each conv: batch, layer or null.")


class ResnetModel(_Section):
    name: Literal["resnet"] = Field(description="Small ResNet (basic blocks, batch norm) for 8x8 to 32x32 NHWC images.")
    stage_sizes: tuple[PositiveInt, ...] = Field((2, 2), description="Residual blocks per stage; each later stage halves the resolution.")
    num_filters: PositiveInt = Field(16, description="Channels of the first stage (doubled per stage).")
    num_outputs: Optional[PositiveInt] = Field(None, description="Output width; null: inferred from the data.")


class TransformerLmModel(_Section):
    name: Literal["transformer_lm"] = Field(description="Decoder-only causal transformer: ids [B, T] -> logits [B, T, vocab].")
    vocab_size: Optional[PositiveInt] = Field(None, description="Token ids; null: inferred from the data.")
    seq_len: Optional[PositiveInt] = Field(None, description="Longest sequence; null: the data's sequence length.")
    d_model: PositiveInt = Field(128, description="Width of the residual stream.")
    num_layers: PositiveInt = Field(2, description="Transformer blocks.")
    num_heads: PositiveInt = Field(4, description="Attention heads (must divide d_model).")
    mlp_dim: PositiveInt = Field(512, description="Hidden width of each block's MLP.")
    dropout_rate: Fraction = Field(0.0, description="Dropout in the blocks.")
    position: Literal["learned", "sinusoidal"] = Field("learned", description="Position embedding.")


_MODELS = {"mlp": MlpModel, "cnn": CnnModel, "resnet": ResnetModel, "transformer_lm": TransformerLmModel}


class CustomModel(_Custom):
    """``fn(**kwargs) -> fntrain.nn.Module``; ``num_outputs`` is passed when ``fn`` takes it."""

    kind = "model"
    builtins = tuple(_MODELS)


ModelConfig = _union(_MODELS, CustomModel, "model")

# --------------------------------------------------------------------------- loss


class LossConfig(_Custom):
    kind = "loss"
    builtins = ("softmax_cross_entropy", "sigmoid_binary_cross_entropy", "mean_squared_error", "mse", "huber")

    name: str = Field(
        "softmax_cross_entropy",
        description="softmax_cross_entropy, sigmoid_binary_cross_entropy, mean_squared_error (mse), huber, "
        "a registered name, or `module.path:function`.",
    )
    label_smoothing: Fraction = Field(0.0, description="softmax_cross_entropy only: mix targets with uniform.")
    delta: Annotated[float, Strict(), Field(gt=0)] = Field(1.0, description="huber only: where the loss turns linear.")


# --------------------------------------------------------------------------- optimizer


class ScheduleConfig(_Section):
    name: Literal["constant", "cosine", "warmup_cosine", "linear", "piecewise", "exponential"] = Field(
        "constant", description="Learning-rate schedule; every one starts from `optimizer.learning_rate`."
    )
    warmup_steps: NonNegativeInt = Field(0, description="warmup_cosine: linear warm-up from 0.")
    decay_steps: Optional[PositiveInt] = Field(None, description="cosine, warmup_cosine, linear: steps to decay over; null: the whole run.")
    end_value: Annotated[float, Strict(), Field(ge=0)] = Field(0.0, description="cosine, warmup_cosine, linear, exponential: the final learning rate.")
    boundaries: tuple[PositiveInt, ...] = Field((), description="piecewise: steps at which the rate is multiplied.")
    scales: tuple[Annotated[float, Strict(), Field(gt=0)], ...] = Field((), description="piecewise: the factor at each boundary.")
    decay_rate: Annotated[float, Strict(), Field(gt=0)] = Field(0.5, description="exponential: factor per `transition_steps`.")
    transition_steps: PositiveInt = Field(1000, description="exponential: steps per decay by `decay_rate`.")

    @model_validator(mode="after")
    def _piecewise_pairs(self):
        if len(self.boundaries) != len(self.scales):
            raise ValueError(f"scales: {len(self.scales)} given for {len(self.boundaries)} boundaries; they must pair up")
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError("boundaries: must be increasing")
        return self


class OptimizerConfig(_Section):
    name: Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"] = Field("adam", description="The optax optimizer.")
    learning_rate: Annotated[float, Strict(), Field(gt=0)] = Field(1e-3, description="Peak learning rate.")
    momentum: Optional[Annotated[float, Strict(), Field(ge=0, lt=1)]] = Field(
        None, description="momentum, nesterov, rmsprop: momentum; null: 0.9 for momentum/nesterov, none for rmsprop."
    )
    b1: Annotated[float, Strict(), Field(ge=0, lt=1)] = Field(0.9, description="adam, adamw: first-moment decay.")
    b2: Annotated[float, Strict(), Field(ge=0, lt=1)] = Field(0.999, description="adam, adamw: second-moment decay.")
    eps: Annotated[float, Strict(), Field(gt=0)] = Field(1e-8, description="adam, adamw, rmsprop: denominator epsilon.")
    decay: Annotated[float, Strict(), Field(gt=0, lt=1)] = Field(0.9, description="rmsprop: squared-gradient decay.")
    weight_decay: Annotated[float, Strict(), Field(ge=0)] = Field(
        0.0,
        description="Weight decay of matrices and kernels (not biases or norm scales): decoupled for adamw, "
        "added to the gradient for sgd, momentum, nesterov and rmsprop; adam takes none (use adamw).",
    )
    clip_grad_norm: Optional[Annotated[float, Strict(), Field(gt=0)]] = Field(None, description="Clip gradients to this global norm; null: no clipping.")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="Learning-rate schedule.")

    @model_validator(mode="after")
    def _adam_has_no_weight_decay(self):
        if self.name == "adam" and self.weight_decay:
            raise ValueError("weight_decay: adam takes none; use name: adamw for decoupled weight decay")
        return self


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
    every_minutes: Optional[Annotated[float, Strict(), Field(gt=0)]] = Field(
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
    min_delta: Annotated[float, Strict(), Field(ge=0)] = Field(0.0, description="Smallest change that counts as an improvement.")
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
    loss: LossConfig = Field(LossConfig(), description="Loss function.")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="Optimizer and schedule.")
    loop: LoopConfig = Field(description="The outer loop.")
    log: LogConfig = Field(LogConfig(), description="Logging.")
    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="Checkpoints and resuming.")
    early_stopping: EarlyStoppingConfig = Field(EarlyStoppingConfig(), description="Early stopping on a validation metric.")
    parallel: ParallelConfig = Field(ParallelConfig(), description="Devices, sharding and multi-host.")


_UNION_TAGS |= set(_DATA) | set(_MODELS)

# --------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.1 requires a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parses YAML with the safe loader, reporting syntax errors as ConfigError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"optimizer.learning_rate=3e-4"`` -> ``(("optimizer", "learning_rate"), 0.0003)``."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like dotted.key=value, e.g. optimizer.learning_rate=3e-4")
    return tuple(key.split(".")), parse_yaml(value, f"override {text!r}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Returns a copy of ``raw`` with each ``dotted.key=value`` set (sections created as needed)."""
    import copy

    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _dotted(loc: tuple) -> str:
    parts = []
    for i, part in enumerate(loc):
        # Drop the union tags pydantic inserts (data.digits.batch_size -> data.batch_size).
        if isinstance(part, str) and part in _UNION_TAGS and i > 0:
            continue
        if isinstance(part, str) and ("function-after" in part or part.startswith("function-")):
            continue
        parts.append(str(part) if isinstance(part, str) else f"[{part}]")
    return ".".join(parts).replace(".[", "[")


def _allowed_fields(loc: tuple, raw: dict) -> list[str]:
    """Field names valid at ``loc``'s parent, for "did you mean" suggestions."""
    cls: Any = Config
    node: Any = raw
    for part in loc[:-1]:
        if isinstance(part, str) and part in _UNION_TAGS:
            continue
        field = cls.model_fields.get(part) if isinstance(cls, type) else None
        if field is None:
            return []
        node = node.get(part, {}) if isinstance(node, dict) else {}
        ann = field.annotation
        if part == "data":
            cls = _DATA.get(node.get("name"), CustomData)
        elif part == "model":
            cls = _MODELS.get(node.get("name"), CustomModel)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            return []
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _describe(error: dict, raw: dict) -> str:
    loc = error["loc"]
    key = _dotted(loc)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _allowed_fields(loc, raw), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{key}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    field, sep, rest = message.partition(": ")
    if sep and re.fullmatch(r"[a-z_]+", field):  # a cross-field check naming its field
        key, message = f"{key}.{field}" if key else field, rest
    got = error.get("input")
    shown = "" if isinstance(got, dict) or got is None or repr(got) in message else f" (got {got!r})"
    return f"{key}: {message}{shown}" if key else f"{message}"


def validate(raw: Any, source: str) -> Config:
    """Validates a parsed YAML mapping into a ``Config``; all problems in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(_describe(err, raw) for err in e.errors())
        raise ConfigError(f"{source}: {problems}") from None
    except ConfigError as e:  # from registry lookups inside validation
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Reads, overrides and validates a YAML config file.

    Args:
      path: the YAML file.
      overrides: ``dotted.key=value`` strings; values are parsed as YAML.

    Raises:
      ConfigError: naming the file and every offending dotted key.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, list(overrides))
    if raw.get("output_dir") is None:
        raw["output_dir"] = str(Path("runs") / path.stem)
    return validate(raw, str(path))


def config_to_dict(config: Config) -> dict:
    """A plain, YAML-ready dict that ``validate`` turns back into an equal ``Config``."""
    def plain(section: BaseModel) -> dict:
        out = {}
        fields = list(type(section).model_fields)
        for name in sorted(fields, key=lambda f: f != "name"):  # name first: it picks the rest
            value = getattr(section, name)
            if isinstance(value, BaseModel):
                value = plain(value)
            elif name == "kwargs":
                value = _thaw(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    return plain(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


# --------------------------------------------------------------------------- reference


def _type_name(annotation) -> str:
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if annotation is type(None):
        return "null"
    if annotation is tuple:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _rows(prefix: str, section: type[BaseModel], skip=()) -> list[str]:
    rows = []
    fields = sorted(section.model_fields.items(), key=lambda kv: kv[0] != "name")
    for name, field in fields:
        if name in skip:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _rows(f"{prefix}{name}.", ann)
            continue
        if field.is_required():
            default = "required"
        else:
            value = field.default
            default = "`{}`" if name == "kwargs" else "`null`" if value is None else f"`{list(value) if isinstance(value, tuple) else value}`"
        rows.append(f"| `{prefix}{name}` | {_type_name(ann)} | {default} | {field.description or ''} |")
    return rows


def reference_markdown() -> str:
    """Every config key with its type, default and meaning, as Markdown tables."""
    head = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]

    def table(rows):
        return "\n".join(head + rows) + "\n"

    sections = ("loss", "optimizer", "loop", "log", "checkpoint", "early_stopping", "parallel")
    out = ["#### Top level\n", table(_rows("", Config, skip=("data", "model", *sections)))]
    for name in sections:
        out += [f"#### `{name}`\n", table(_rows(f"{name}.", Config.model_fields[name].annotation))]
    out += ["#### `data`: every source (charlm: the batching keys only)\n", table(_rows("data.", _DataCommon))]
    common = set(_DataCommon.model_fields)
    for tag, cls in {**_DATA, "<module.path:function>": CustomData}.items():
        out += [f"#### `data.name: {tag}`\n", table(_rows("data.", cls, skip=common))]
    for tag, cls in {**_MODELS, "<module.path:function>": CustomModel}.items():
        out += [f"#### `model.name: {tag}`\n", table(_rows("model.", cls))]
    return "\n".join(out)
