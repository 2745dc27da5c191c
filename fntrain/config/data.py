"""The ``data`` section: one class per source, each loading its own arrays.

A source gives its splits as :class:`fntrain.data.Part` s (``parts``): the training split,
and the validation and test splits its files hold. ``build`` checks each (``fntrain.data.
check_part``: nothing empty, non-numeric or non-finite, class labels in range), carves only
the missing splits out of train with the seed's key, and converts and standardizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, Optional, Union

import jax
import numpy as np
from pydantic import Field, Strict, model_validator

from fntrain import data as data_lib
from fntrain import registry
from fntrain.config.base import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, _Custom, _Section, _union
from fntrain.errors import ConfigError

SPLITS = ("train", "val", "test")


class _Batching(_Section):
    batch_size: PositiveInt = Field(64, description="Examples per training step.")
    eval_batch_size: Optional[PositiveInt] = Field(None, description="Examples per evaluation batch; null: 4 x batch_size.")
    shuffle: bool = Field(True, description="Reshuffle the training split every epoch (from `seed`).")
    drop_last: bool = Field(False, description="Drop each epoch's final partial batch.")
    on_device: Optional[bool] = Field(
        None,
        description="Keep the training split in device memory and gather each batch there, which saves a "
        "host-to-device copy per step; null: when one process trains, the split takes at most 1 GiB and it is "
        "in memory (data read from disk, `npy`, stays on the host unless this is true).",
    )
    prefetch: NonNegativeInt = Field(
        2,
        description="Dispatches of host batches (data not on the device) a background thread reads and places "
        "ahead of the step; the batches and results are the same for any value; 0: prepared in the loop's "
        "thread, one dispatch ahead.",
    )


class _DataCommon(_Batching):
    """A source of ``(x, y)`` arrays; the val and test splits it lacks are drawn at random
    (from the seed) out of its training examples."""

    val_fraction: Fraction = Field(
        0.1, description="Fraction of the training examples held out for validation when the source has no val split."
    )
    test_fraction: Fraction = Field(
        0.1, description="Fraction of the training examples held out for testing when the source has no test split."
    )
    standardize: bool = Field(False, description="Standardize inputs per feature with training-split statistics.")
    standardize_targets: bool = Field(
        False,
        description="Regression: the network predicts `mean + std * f(x)` with the training targets' mean and std, "
        "constants kept in the model state (`target_scale`), so `f` learns standardized targets while losses, "
        "metrics and predictions stay in the original units. Gradients are those of the original units: std^2 "
        "times the standardized problem's for mse (std for huber beyond delta); Adam-type optimizers do not mind, "
        "with sgd/momentum scale learning_rate by 1/std^2.",
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("test_fraction: val_fraction + test_fraction must be below 1 so that training data remains")
        return self

    # A source defines one of `load` (all its examples) or `parts` (its splits).

    def load(self, seed: int) -> data_lib.Arrays:
        """The training examples, before splitting (all of them for a source without splits);
        generated sources draw from ``seed``."""
        return self.parts(seed)["train"].arrays

    def parts(self, seed: int) -> dict[str, data_lib.Part]:
        """The splits the source gives, ``{"train": Part, "val"?: Part, "test"?: Part}``."""
        return {"train": data_lib.Part(self.load(seed), f"data {self.name!r}: x", f"data {self.name!r}: y")}

    def build(self, *, seed: int, key: jax.Array, targets: Optional[data_lib.Targets] = None) -> data_lib.Splits:
        """Loads and checks the source's splits, carves the missing ones out of train (with
        ``key``) and optionally standardizes the inputs.

        Float targets of shape ``[N]`` become ``[N, 1]`` so they match a network's ``[N, 1]``
        output; float inputs become float32. ``targets`` (what the loss needs, see
        ``fntrain.data.Targets``) decides the label checks; None: none.

        Raises:
          DataError: bad data, naming the file, the array and the row.
        """
        targets = targets or data_lib.Targets()
        given = {split: data_lib.check_part(part, targets).arrays for split, part in self.parts(seed).items()}
        splits = data_lib.complete_splits(given, val_fraction=self.val_fraction, test_fraction=self.test_fraction, key=key)
        splits = data_lib.Splits(*(None if a is None else _model_ready(a) for a in splits))
        if self.standardize:
            splits, _ = data_lib.standardize(splits)
        return splits


def _model_ready(arrays: data_lib.Arrays) -> data_lib.Arrays:
    """Float inputs as float32 and float ``[N]`` targets as ``[N, 1]`` (lazily for data on disk)."""
    x, y = arrays
    if np.issubdtype(y.dtype, np.floating) and y.ndim == 1:
        y = data_lib.transform(y, lambda b: b[:, None])
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        x = data_lib.transform(x, lambda b: b.astype(np.float32))
    elif x.dtype == np.bool_:
        x = data_lib.transform(x, lambda b: b.astype(np.float32))
    return data_lib.Arrays(x, y)


def _split_paths(c, *pairs: tuple[str, ...]) -> None:
    """Refuses a split given by only some of its files (``pairs``: field names per split)."""
    for fields in pairs:
        given = [f for f in fields if getattr(c, f) is not None]
        if given and len(given) != len(fields):
            missing = next(f for f in fields if getattr(c, f) is None)
            raise ValueError(f"{missing}: required with {given[0]} (a split needs all its files)")


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
    name: Literal["npz"] = Field(
        description="Arrays from a NumPy `.npz` file, read into memory without pickle (for data larger than "
        "memory use `npy`). Splits the archive holds are used as they are: `{x_key}_val`/`{y_key}_val` and "
        "`{x_key}_test`/`{y_key}_test` (training arrays `{x_key}`/`{y_key}` or `{x_key}_train`/`{y_key}_train`); "
        "only the missing splits are drawn from train."
    )
    path: str = Field(description="Path of the `.npz` file.")
    x_key: str = Field("x", description="Array name of the inputs (`x_train`, `x_val`, `x_test` per split).")
    y_key: str = Field("y", description="Array name of the targets (`y_train`, `y_val`, `y_test` per split).")

    def parts(self, seed: int) -> dict[str, data_lib.Part]:
        return data_lib.npz_parts(self.path, self.x_key, self.y_key)


class NpyData(_DataCommon):
    name: Literal["npy"] = Field(
        description="One NumPy `.npy` file per array and split, opened with `np.load(mmap_mode='r')` and read a "
        "batch at a time, never whole: for data larger than memory. Kept on the host (see `on_device`); "
        "splits drawn from train are row indices into the file."
    )
    x_path: str = Field(description="`.npy` of the training inputs [N, ...] (C order).")
    y_path: str = Field(description="`.npy` of the training targets [N, ...].")
    val_x_path: Optional[str] = Field(None, description="`.npy` of the validation inputs; null: drawn from train.")
    val_y_path: Optional[str] = Field(None, description="`.npy` of the validation targets (with val_x_path).")
    test_x_path: Optional[str] = Field(None, description="`.npy` of the test inputs; null: drawn from train.")
    test_y_path: Optional[str] = Field(None, description="`.npy` of the test targets (with test_x_path).")

    @model_validator(mode="after")
    def _pairs(self):
        _split_paths(self, ("val_x_path", "val_y_path"), ("test_x_path", "test_y_path"))
        return self

    def parts(self, seed: int) -> dict[str, data_lib.Part]:
        files = {"train": (self.x_path, self.y_path), "val": (self.val_x_path, self.val_y_path),
                 "test": (self.test_x_path, self.test_y_path)}
        return {split: data_lib.Part(data_lib.load_npy(x, y), x, y) for split, (x, y) in files.items() if x is not None}


class IdxData(_DataCommon):
    name: Literal["idx"] = Field(
        description="MNIST-format IDX files, gzipped or not: an images/labels pair per split (MNIST's train and "
        "t10k); only the missing splits are drawn from train."
    )
    images_path: str = Field(description="Path of the IDX training images file.")
    labels_path: str = Field(description="Path of the IDX training labels file.")
    val_images_path: Optional[str] = Field(None, description="IDX validation images; null: drawn from train.")
    val_labels_path: Optional[str] = Field(None, description="IDX validation labels (with val_images_path).")
    test_images_path: Optional[str] = Field(None, description="IDX test images (MNIST's t10k); null: drawn from train.")
    test_labels_path: Optional[str] = Field(None, description="IDX test labels (with test_images_path).")

    @model_validator(mode="after")
    def _pairs(self):
        _split_paths(self, ("val_images_path", "val_labels_path"), ("test_images_path", "test_labels_path"))
        return self

    def parts(self, seed: int) -> dict[str, data_lib.Part]:
        files = {"train": (self.images_path, self.labels_path), "val": (self.val_images_path, self.val_labels_path),
                 "test": (self.test_images_path, self.test_labels_path)}
        return {split: data_lib.Part(data_lib.load_idx(i, l), i, l) for split, (i, l) in files.items() if i is not None}


class CsvData(_DataCommon):
    name: Literal["csv"] = Field(
        description="CSV files of numeric columns (UTF-8), one per split; only the missing splits are drawn from train."
    )
    path: str = Field(description="Path of the training CSV file.")
    val_path: Optional[str] = Field(None, description="CSV file of the validation split (same columns); null: drawn from train.")
    test_path: Optional[str] = Field(None, description="CSV file of the test split (same columns); null: drawn from train.")
    target_column: Union[int, str] = Field(-1, description="Target column: an index or a header name.")
    target_dtype: Literal["int", "float"] = Field("int", description="int: class labels; float: regression targets.")
    header: Optional[bool] = Field(None, description="Whether the first row is a header; null: detect.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator, one character.")

    def parts(self, seed: int) -> dict[str, data_lib.Part]:
        files = {"train": self.path, "val": self.val_path, "test": self.test_path}
        options = dict(target_column=self.target_column, header=self.header, delimiter=self.delimiter,
                       target_dtype=self.target_dtype)
        return {split: data_lib.csv_part(path, **options) for split, path in files.items() if path is not None}


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

    def build(self, *, seed: int, key: jax.Array, targets: Optional[data_lib.Targets] = None) -> data_lib.Splits:
        """A fixed, contiguous split (random windows would leak between splits); no test split.
        The text is known to be good, so ``targets`` asks for no checks."""
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
    "npy": NpyData,
    "idx": IdxData,
    "csv": CsvData,
}


class CustomData(_DataCommon, _Custom):
    """``fn(**kwargs)`` returns ``fntrain.data.Arrays`` or an ``(x, y)`` pair, or a mapping of
    splits (``{"train": (x, y), "test": (x, y)}``, ``val`` optional); the missing splits are
    drawn from train. Arrays from ``fntrain.data.load_npy`` are read a batch at a time."""

    kind = "dataset"
    builtins = tuple(DATA_VARIANTS)

    def parts(self, seed: int) -> dict[str, data_lib.Part]:
        out = registry.call_user(self.function(), self.kwargs_dict, "data")
        label = f"dataset {self.name!r}"
        if not isinstance(out, Mapping):
            return {"train": _user_part(out, label)}
        unknown = sorted(str(k) for k in out if k not in SPLITS)
        if "train" not in out or unknown:
            raise ConfigError(
                f"{label} returned a mapping with keys {sorted(map(str, out))}; expected 'train' and optionally "
                "'val' and 'test'"
            )
        return {split: _user_part(out[split], f"{label} ({split} split)") for split in SPLITS if out.get(split) is not None}


def _user_part(value, label: str) -> data_lib.Part:
    """A user dataset's ``Arrays`` or ``(x, y)`` pair as a checked-aligned Part."""
    try:
        x, y = value
    except (TypeError, ValueError):
        raise ConfigError(
            f"{label} must return fntrain.data.Arrays, an (x, y) pair, or a mapping of 'train', 'val' and 'test' to "
            f"them; got {type(value).__name__}"
        ) from None
    arrays = []
    for name, a in (("x", x), ("y", y)):
        if data_lib.is_lazy(a):
            arrays.append(a)
            continue
        try:
            arrays.append(np.asarray(a))
        except (ValueError, TypeError) as e:
            raise data_lib.DataError(f"{label}: {name} is not an array of numbers ({e}); expected equal-length rows") from None
    x, y = arrays
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise data_lib.DataError(f"{label}: x has shape {tuple(x.shape)} and y {tuple(y.shape)}; expected one row of "
                                 "each per example")
    return data_lib.Part(data_lib.Arrays(x, y), f"{label}: x", f"{label}: y")


DataConfig = _union("data", DATA_VARIANTS, custom=CustomData)
