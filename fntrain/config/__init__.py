"""The configuration: schema, YAML loading, ``dotted.key=value`` overrides, messages, reference.

Configs are frozen pydantic models: immutable and hashable, so a config can be closed over
or passed to ``jax.jit`` as a static argument. A section with variants (``data``, ``model``,
``loss``, ``optimizer``, ``optimizer.schedule``) is a union of classes picked by its
``name``; each class holds only its own keys and builds its own object.

Modules:
  base: sections, ``FrozenMapping``, user components, variant unions, shared field types.
  data, model, loss, optim, schedule: the variants of those sections, each with its build method.
  aliases: optax's named optimizers and their signatures, for ``optimizer.name: optax:NAME``.
  schema: ``Config`` and the sections without variants.
  loading: YAML and overrides in, ``Config`` out; ``dump_config`` back.
  population: the ``population`` section (seeds x a grid of hyperparameters).
  messages: pydantic errors as one line per dotted key.
  reference: the Markdown reference in ``docs/CONFIG.md``.
"""

from fntrain.config.base import (
    Fraction,
    FrozenList,
    FrozenMapping,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Variants,
)
from fntrain.config.data import (
    DATA_VARIANTS,
    CharLMData,
    ClassificationData,
    CsvData,
    CustomData,
    DataConfig,
    DigitsData,
    IdxData,
    NpzData,
    RegressionData,
    SequenceOrderData,
)
from fntrain.config.loading import (
    apply_overrides,
    config_to_dict,
    dump_config,
    load_config,
    parse_override,
    parse_yaml,
    validate,
)
from fntrain.config.loss import (
    LOSS_VARIANTS,
    CustomLoss,
    HuberLoss,
    LossConfig,
    MeanSquaredErrorLoss,
    SigmoidBinaryCrossEntropyLoss,
    SoftmaxCrossEntropyLoss,
    loss_variant,
)
from fntrain.config.model import (
    MODEL_VARIANTS,
    Activation,
    Cnn1dModel,
    CnnModel,
    CustomModel,
    MlpModel,
    ModelConfig,
    Norm,
    ResnetModel,
    RnnModel,
    TransformerLmModel,
)
from fntrain.config.optim import (
    OPTIMIZER_VARIANTS,
    AdamOptimizer,
    AdamwOptimizer,
    MomentumOptimizer,
    NesterovOptimizer,
    OptaxOptimizer,
    OptimizerConfig,
    ParamGroupConfig,
    PlateauConfig,
    RmspropOptimizer,
    SgdOptimizer,
)
from fntrain.config.population import GRID_KEYS, PopulationConfig
from fntrain.config.reference import reference_markdown
from fntrain.config.schedule import (
    SCHEDULE_VARIANTS,
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    LinearSchedule,
    PiecewiseSchedule,
    ScheduleConfig,
    WarmupConstantSchedule,
    WarmupCosineSchedule,
    WarmupStableDecaySchedule,
)
from fntrain.config.schema import (
    CallbackConfig,
    CheckpointConfig,
    Config,
    EarlyStoppingConfig,
    LogConfig,
    LoopConfig,
    ObjectiveConfig,
    ParallelConfig,
)

__all__ = [
    "DATA_VARIANTS",
    "GRID_KEYS",
    "LOSS_VARIANTS",
    "MODEL_VARIANTS",
    "OPTIMIZER_VARIANTS",
    "SCHEDULE_VARIANTS",
    "Activation",
    "AdamOptimizer",
    "AdamwOptimizer",
    "CallbackConfig",
    "CharLMData",
    "CheckpointConfig",
    "ClassificationData",
    "Cnn1dModel",
    "CnnModel",
    "Config",
    "ConstantSchedule",
    "CosineSchedule",
    "CsvData",
    "CustomData",
    "CustomLoss",
    "CustomModel",
    "DataConfig",
    "DigitsData",
    "EarlyStoppingConfig",
    "ExponentialSchedule",
    "Fraction",
    "FrozenList",
    "FrozenMapping",
    "HuberLoss",
    "IdxData",
    "LinearSchedule",
    "LogConfig",
    "LoopConfig",
    "LossConfig",
    "MeanSquaredErrorLoss",
    "MlpModel",
    "ModelConfig",
    "MomentumOptimizer",
    "NesterovOptimizer",
    "NonNegativeFloat",
    "NonNegativeInt",
    "Norm",
    "NpzData",
    "ObjectiveConfig",
    "OptaxOptimizer",
    "OptimizerConfig",
    "ParallelConfig",
    "ParamGroupConfig",
    "PiecewiseSchedule",
    "PlateauConfig",
    "PopulationConfig",
    "PositiveFloat",
    "PositiveInt",
    "RegressionData",
    "ResnetModel",
    "RmspropOptimizer",
    "RnnModel",
    "ScheduleConfig",
    "SequenceOrderData",
    "SgdOptimizer",
    "SigmoidBinaryCrossEntropyLoss",
    "SoftmaxCrossEntropyLoss",
    "TransformerLmModel",
    "Variants",
    "WarmupConstantSchedule",
    "WarmupCosineSchedule",
    "WarmupStableDecaySchedule",
    "apply_overrides",
    "config_to_dict",
    "dump_config",
    "load_config",
    "loss_variant",
    "parse_override",
    "parse_yaml",
    "reference_markdown",
    "validate",
]
