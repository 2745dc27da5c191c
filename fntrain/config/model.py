"""The ``model`` section: one class per network, each building its own ``nn.Module``."""

from __future__ import annotations

import inspect
from typing import Literal, Optional, Union

from pydantic import Field

from fntrain import nn, registry
from fntrain.config.base import Fraction, PositiveInt, _Custom, _Section, _union
from fntrain.errors import ConfigError

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "softplus", "identity"]
Norm = Optional[Literal["batch", "layer"]]
IntOrPair = Union[PositiveInt, tuple[PositiveInt, PositiveInt]]


class _Model(_Section):
    def build(self, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
        """The network.

        Args:
          num_outputs: fills ``num_outputs: null`` (and ``vocab_size: null``).
          input_shape: one example's shape, ``[T]`` for token sequences (fills ``seq_len: null``).
        """
        raise NotImplementedError


class MlpModel(_Model):
    name: Literal["mlp"] = Field(description="Multi-layer perceptron on flattened inputs.")
    hidden_sizes: tuple[PositiveInt, ...] = Field((128,), description="Widths of the hidden layers.")
    num_outputs: Optional[PositiveInt] = Field(None, description="Output width; null: inferred from the data.")
    activation: Activation = Field("relu", description="Hidden activation.")
    dropout_rate: Fraction = Field(0.0, description="Dropout probability after each hidden layer.")
    norm: Norm = Field(None, description="Normalisation after each hidden dense layer: batch, layer or null.")

    def build(self, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
        return nn.mlp(
            self.hidden_sizes,
            self.num_outputs or num_outputs,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            norm=self.norm,
        )


class CnnModel(_Model):
    name: Literal["cnn"] = Field(description="Small CNN for NHWC images: conv blocks then an MLP head.")
    channels: tuple[PositiveInt, ...] = Field((32, 64), description="Channels of each conv block.")
    kernel_size: IntOrPair = Field(3, description="Kernel size: an int (square) or `[h, w]`.")
    strides: IntOrPair = Field(1, description="Convolution strides: an int or `[h, w]`.")
    pool: Optional[Literal["max", "avg"]] = Field("max", description="Pooling after each block, or null.")
    pool_size: IntOrPair = Field(2, description="Pooling window (and stride): an int or `[h, w]`.")
    hidden_sizes: tuple[PositiveInt, ...] = Field((128,), description="Widths of the dense head.")
    num_outputs: Optional[PositiveInt] = Field(None, description="Output width; null: inferred from the data.")
    activation: Activation = Field("relu", description="Activation.")
    dropout_rate: Fraction = Field(0.0, description="Dropout probability in the head.")
    norm: Norm = Field(None, description="Normalisation after each conv: batch, layer or null.")

    def build(self, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
        return nn.cnn(
            self.channels,
            self.num_outputs or num_outputs,
            kernel_size=self.kernel_size,
            strides=self.strides,
            pool=self.pool,
            pool_size=self.pool_size,
            hidden_sizes=self.hidden_sizes,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            norm=self.norm,
        )


class Cnn1dModel(_Model):
    name: Literal["cnn1d"] = Field(
        description="Small 1-D CNN for sequences [N, L, C] (or [N, L], one channel): conv1d blocks then an MLP head."
    )
    channels: tuple[PositiveInt, ...] = Field((32, 64), description="Channels of each conv block.")
    kernel_size: PositiveInt = Field(5, description="Kernel length.")
    strides: PositiveInt = Field(1, description="Convolution stride.")
    pool: Optional[Literal["max", "avg"]] = Field("max", description="Pooling after each block, or null.")
    pool_size: PositiveInt = Field(2, description="Pooling window (and stride).")
    hidden_sizes: tuple[PositiveInt, ...] = Field((128,), description="Widths of the dense head.")
    num_outputs: Optional[PositiveInt] = Field(None, description="Output width; null: inferred from the data.")
    activation: Activation = Field("relu", description="Activation.")
    dropout_rate: Fraction = Field(0.0, description="Dropout probability in the head.")
    norm: Norm = Field(None, description="Normalisation after each conv: batch, layer or null.")

    def build(self, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
        return nn.cnn1d(
            self.channels,
            self.num_outputs or num_outputs,
            kernel_size=self.kernel_size,
            strides=self.strides,
            pool=self.pool,
            pool_size=self.pool_size,
            hidden_sizes=self.hidden_sizes,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            norm=self.norm,
        )


class RnnModel(_Model):
    name: Literal["rnn"] = Field(
        description="Recurrent network for sequence classification and regression: stacked GRU or LSTM layers "
        "over [N, T, F] (or [N, T], one feature per step), a dense layer on the last state."
    )
    cell: Literal["gru", "lstm"] = Field("gru", description="The recurrent cell (PyTorch's equations and gate order).")
    hidden_size: PositiveInt = Field(64, description="State width of every layer.")
    num_layers: PositiveInt = Field(1, description="Stacked recurrent layers.")
    num_outputs: Optional[PositiveInt] = Field(None, description="Output width; null: inferred from the data.")
    dropout_rate: Fraction = Field(0.0, description="Dropout after each recurrent layer.")

    def build(self, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
        return nn.rnn(
            self.num_outputs or num_outputs,
            cell=self.cell,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            dropout_rate=self.dropout_rate,
        )


class ResnetModel(_Model):
    name: Literal["resnet"] = Field(description="Small ResNet (basic blocks, batch norm) for 8x8 to 32x32 NHWC images.")
    stage_sizes: tuple[PositiveInt, ...] = Field((2, 2), description="Residual blocks per stage; each later stage halves the resolution.")
    num_filters: PositiveInt = Field(16, description="Channels of the first stage (doubled per stage).")
    num_outputs: Optional[PositiveInt] = Field(None, description="Output width; null: inferred from the data.")

    def build(self, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
        return nn.resnet(self.stage_sizes, self.num_filters, self.num_outputs or num_outputs)


class TransformerLmModel(_Model):
    name: Literal["transformer_lm"] = Field(description="Decoder-only causal transformer: ids [B, T] -> logits [B, T, vocab].")
    vocab_size: Optional[PositiveInt] = Field(None, description="Token ids; null: inferred from the data.")
    seq_len: Optional[PositiveInt] = Field(None, description="Longest sequence; null: the data's sequence length.")
    d_model: PositiveInt = Field(128, description="Width of the residual stream.")
    num_layers: PositiveInt = Field(2, description="Transformer blocks.")
    num_heads: PositiveInt = Field(4, description="Attention heads (must divide d_model).")
    mlp_dim: PositiveInt = Field(512, description="Hidden width of each block's MLP.")
    dropout_rate: Fraction = Field(0.0, description="Dropout in the blocks.")
    position: Literal["learned", "sinusoidal"] = Field("learned", description="Position embedding.")

    def build(self, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
        if self.d_model % self.num_heads:
            raise ConfigError(f"model.num_heads ({self.num_heads}) must divide model.d_model ({self.d_model})")
        seq_len = self.seq_len or (input_shape[0] if input_shape else None)
        if seq_len is None:
            raise ConfigError("model.seq_len is null and the data has no sequence axis to infer it from")
        return nn.transformer_lm(
            self.vocab_size or num_outputs,
            seq_len,
            self.d_model,
            self.num_layers,
            self.num_heads,
            self.mlp_dim,
            dropout_rate=self.dropout_rate,
            position=self.position,
        )


MODEL_VARIANTS = {
    "mlp": MlpModel,
    "cnn": CnnModel,
    "cnn1d": Cnn1dModel,
    "rnn": RnnModel,
    "resnet": ResnetModel,
    "transformer_lm": TransformerLmModel,
}


class CustomModel(_Custom, _Model):
    """``fn(**kwargs) -> fntrain.nn.Module``; ``num_outputs`` is passed when ``fn`` takes it."""

    kind = "model"
    builtins = tuple(MODEL_VARIANTS)

    def build(self, num_outputs: int, input_shape: tuple[int, ...] = ()) -> nn.Module:
        fn = self.function()
        kwargs = self.kwargs_dict
        if "num_outputs" not in kwargs and "num_outputs" in inspect.signature(fn).parameters:
            kwargs["num_outputs"] = num_outputs
        net = registry.call_user(fn, kwargs, "model")
        if not isinstance(net, nn.Module):
            raise ConfigError(f"model {self.name!r} must return an fntrain.nn.Module, got {type(net).__name__}")
        return net


ModelConfig = _union("model", MODEL_VARIANTS, custom=CustomModel)
