"""The ``data`` section: one class per source, each loading its own arrays."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import jax
import numpy as np
from pydantic import Field, Strict, model_validator

from fntrain import data as data_lib
from fntrain import registry
from fntrain.config.base import Fraction, PositiveFloat, PositiveInt, _Custom, _Section, _union
from fntrain.errors import ConfigError


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
    """A source of ``(x, y)`` arrays that are split at random (from the seed) and batched."""

    val_fraction: Fraction = Field(0.1, description="Fraction of the examples held out for validation.")
    test_fraction: Fraction = Field(0.1, description="Fraction of the examples held out for testing.")
    standardize: bool = Field(False, description="Standardize inputs per feature with training-split statistics.")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("test_fraction: val_fraction + test_fraction must be below 1 so that training data remains")
        return self

    def load(self, seed: int) -> data_lib.Arrays:
        """All the examples, before splitting; generated sources draw from ``seed``."""
        raise NotImplementedError

    def build(self, *, seed: int, key: jax.Array) -> data_lib.Splits:
        """Loads, splits (with ``key``) and optionally standardizes the examples.

        Float targets of shape ``[N]`` become ``[N, 1]`` so they match a network's ``[N, 1]``
        output; float inputs become float32.
        """
        arrays = self.load(seed)
        if np.issubdtype(arrays.y.dtype, np.floating) and arrays.y.ndim == 1:
            arrays = arrays._replace(y=arrays.y[:, None])
        if np.issubdtype(arrays.x.dtype, np.floating):
            arrays = arrays._replace(x=arrays.x.astype(np.float32))
        splits = data_lib.split_arrays(arrays, val_fraction=self.val_fraction, test_fraction=self.test_fraction, key=key)
        if self.standardize:
            splits, _ = data_lib.standardize(splits)
        return splits


class DigitsData(_DataCommon):
    name: Literal["digits"] = Field(description="scikit-learn's embedded 8x8 digits: x [1797, 8, 8, 1], 10 classes.")

    def load(self, seed: int) -> data_lib.Arrays:
        return data_lib.load_digits()


class ClassificationData(_DataCommon):
    name: Literal["classification"] = Field(description="Generated Gaussian clusters, one per class.")
    num_examples: PositiveInt = Field(1000, description="Examples generated.")
    num_features: PositiveInt = Field(20, description="Input features.")
    num_classes: Annotated[int, Strict(), Field(ge=2)] = Field(3, description="Classes.")
    class_sep: PositiveFloat = Field(2.0, description="Spread of the class centres.")

    def load(self, seed: int) -> data_lib.Arrays:
        return data_lib.make_classification(
            self.num_examples, self.num_features, self.num_classes, seed=seed, class_sep=self.class_sep
        )


class RegressionData(_DataCommon):
    name: Literal["regression"] = Field(description="Generated near-linear regression: y = x W + b + noise.")
    num_examples: PositiveInt = Field(1000, description="Examples generated.")
    num_features: PositiveInt = Field(8, description="Input features.")
    num_outputs: PositiveInt = Field(1, description="Regression targets per example.")
    noise: Annotated[float, Strict(), Field(ge=0)] = Field(0.1, description="Standard deviation of the additive noise.")

    def load(self, seed: int) -> data_lib.Arrays:
        return data_lib.make_regression(self.num_examples, self.num_features, self.num_outputs, noise=self.noise, seed=seed)


class SequenceOrderData(_DataCommon):
    name: Literal["sequence_order"] = Field(
        description="Generated sequences x [N, seq_len] (one feature per step): noise with one +1 and one -1; "
        "target order: label 1 if the +1 comes first; gap: the distance between them. Every sequence holds "
        "the same values, so a model that ignores order is at chance (`fntrain.data.make_sequence_order`)."
    )
    num_examples: PositiveInt = Field(2000, description="Sequences generated.")
    seq_len: Annotated[int, Strict(), Field(ge=2)] = Field(20, description="Steps per sequence.")
    target: Literal["order", "gap"] = Field("order", description="order: 2 classes; gap: a float in [-1, 1].")

    def load(self, seed: int) -> data_lib.Arrays:
        return data_lib.make_sequence_order(self.num_examples, self.seq_len, target=self.target, seed=seed)


class NpzData(_DataCommon):
    name: Literal["npz"] = Field(description="Arrays from a NumPy `.npz` file (loaded without pickle).")
    path: str = Field(description="Path of the `.npz` file.")
    x_key: str = Field("x", description="Array name of the inputs.")
    y_key: str = Field("y", description="Array name of the targets.")

    def load(self, seed: int) -> data_lib.Arrays:
        return data_lib.load_npz(self.path, self.x_key, self.y_key)


class IdxData(_DataCommon):
    name: Literal["idx"] = Field(description="MNIST-format IDX files, gzipped or not.")
    images_path: str = Field(description="Path of the IDX images file.")
    labels_path: str = Field(description="Path of the IDX labels file.")

    def load(self, seed: int) -> data_lib.Arrays:
        return data_lib.load_idx(self.images_path, self.labels_path)


class CsvData(_DataCommon):
    name: Literal["csv"] = Field(description="A CSV file of numeric columns.")
    path: str = Field(description="Path of the CSV file.")
    target_column: Union[int, str] = Field(-1, description="Target column: an index or a header name.")
    target_dtype: Literal["int", "float"] = Field("int", description="int: class labels; float: regression targets.")
    header: Optional[bool] = Field(None, description="Whether the first row is a header; null: detect.")
    delimiter: str = Field(",", description="Field separator.")

    def load(self, seed: int) -> data_lib.Arrays:
        return data_lib.load_csv(
            self.path,
            target_column=self.target_column,
            header=self.header,
            delimiter=self.delimiter,
            target_dtype=self.target_dtype,
        )


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

    def build(self, *, seed: int, key: jax.Array) -> data_lib.Splits:
        """A fixed, contiguous split (random windows would leak between splits); no test split."""
        splits, _ = data_lib.load_char_lm(
            seq_len=self.seq_len, val_fraction=self.val_fraction, stride=self.stride, max_chars=self.max_chars
        )
        return splits


DATA_VARIANTS = {
    "digits": DigitsData,
    "charlm": CharLMData,
    "classification": ClassificationData,
    "regression": RegressionData,
    "sequence_order": SequenceOrderData,
    "npz": NpzData,
    "idx": IdxData,
    "csv": CsvData,
}


class CustomData(_DataCommon, _Custom):
    """``fn(**kwargs)`` returns ``fntrain.data.Arrays`` (or an ``(x, y)`` pair)."""

    kind = "dataset"
    builtins = tuple(DATA_VARIANTS)

    def load(self, seed: int) -> data_lib.Arrays:
        out = registry.call_user(self.function(), self.kwargs_dict, "data")
        try:
            x, y = out
        except (TypeError, ValueError):
            raise ConfigError(f"dataset {self.name!r} must return fntrain.data.Arrays or an (x, y) pair") from None
        return data_lib.Arrays(np.asarray(x), np.asarray(y))


DataConfig = _union("data", DATA_VARIANTS, custom=CustomData)
