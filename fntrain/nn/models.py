"""Ready-made networks built from the layers."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from fntrain.hyperparams import known_zero
from fntrain.nn import attention as A
from fntrain.nn import initializers
from fntrain.nn import blocks as B
from fntrain.nn import layers as L
from fntrain.nn import recurrent as R
from fntrain.nn.core import Module, serial
from fntrain.nn.layers import IntOrPair

_NORMS = {"batch": L.batch_norm, "layer": L.layer_norm}


def _norm(norm: Optional[str]) -> list[Module]:
    if norm is None:
        return []
    try:
        return [_NORMS[norm]()]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(_NORMS)} or None") from None


_RELU_FAMILY = ("relu", "gelu", "softplus")


def _kernel_inits(activation: str, w_init: Optional[initializers.InitializerLike]) -> tuple:
    """(hidden, output) kernel initializers: ``w_init`` for both, or the activation-based rule."""
    if w_init is not None:
        return w_init, w_init
    # He initialisation keeps ReLU-family activations at unit variance; Glorot suits saturating
    # ones, and the (linear) output layer.
    return ("he_normal" if activation in _RELU_FAMILY else "glorot_uniform"), "glorot_uniform"


def mlp(
    hidden_sizes: Sequence[int],
    num_outputs: int,
    *,
    activation: str = "relu",
    dropout_rate: float = 0.0,
    norm: Optional[str] = None,
    w_init: Optional[initializers.InitializerLike] = None,
) -> Module:
    """A multi-layer perceptron; inputs are flattened first.

    ``[N, ...] -> flatten -> (dense -> [norm] -> activation -> [dropout]) * len(hidden_sizes) -> dense``

    Returns ``[N, num_outputs]`` outputs (logits for classification).

    Args:
      hidden_sizes: widths of the hidden layers.
      num_outputs: width of the output layer.
      activation: name of the hidden activation (see ``nn.ACTIVATIONS``).
      dropout_rate: dropout after each hidden activation in training (needs a key).
      norm: ``"batch"``, ``"layer"`` or None, after each hidden dense layer.
      w_init: initializer (or its name) of every kernel. ``None`` chooses by activation: He
        normal for the hidden layers after ``relu``, ``gelu`` or ``softplus``, Glorot uniform
        after the others, and Glorot uniform for the output layer. This differs from
        :func:`~fntrain.nn.dense`'s default (LeCun normal): pass ``w_init="lecun_normal"`` for
        the network ``serial(flatten, dense(...), relu, ..., dense(num_outputs))`` gives.
    """
    act = L.activation(activation)
    hidden_init, output_init = _kernel_inits(activation, w_init)
    layers: list[Module] = [L.flatten]
    for width in hidden_sizes:
        layers += [L.dense(width, w_init=hidden_init), *_norm(norm), act]
        if not known_zero(dropout_rate):
            layers.append(L.dropout(dropout_rate))
    layers.append(L.dense(num_outputs, w_init=output_init))
    return serial(*layers)


def _conv_net(
    conv: Callable[[int], Module],
    channels: Sequence[int],
    num_outputs: int,
    *,
    pool: Optional[str],
    pool_size: IntOrPair,
    hidden_sizes: Sequence[int],
    activation: str,
    dropout_rate: float,
    norm: Optional[str],
    w_init,
    first: Sequence[Module] = (),
) -> Module:
    """``first -> (conv -> [norm] -> activation -> [pool]) * len(channels) -> flatten -> mlp head``."""
    if pool not in ("max", "avg", None):
        raise ValueError(f"pool must be 'max', 'avg' or None, got {pool!r}")
    act = L.activation(activation)
    w_init, output_init = _kernel_inits(activation, w_init)
    layers: list[Module] = list(first)
    for c in channels:
        layers += [conv(c, w_init), *_norm(norm), act]
        if pool == "max":
            layers.append(L.max_pool(pool_size, padding="SAME"))
        elif pool == "avg":
            layers.append(L.avg_pool(pool_size, padding="SAME"))
    layers.append(L.flatten)
    for width in hidden_sizes:
        layers += [L.dense(width, w_init=w_init), act]
        if not known_zero(dropout_rate):
            layers.append(L.dropout(dropout_rate))
    layers.append(L.dense(num_outputs, w_init=output_init))
    return serial(*layers)


def cnn(
    channels: Sequence[int],
    num_outputs: int,
    *,
    kernel_size: IntOrPair = 3,
    strides: IntOrPair = 1,
    pool: Optional[str] = "max",
    pool_size: IntOrPair = 2,
    hidden_sizes: Sequence[int] = (128,),
    activation: str = "relu",
    dropout_rate: float = 0.0,
    norm: Optional[str] = None,
    w_init: Optional[initializers.InitializerLike] = None,
) -> Module:
    """A small convolutional network for NHWC images.

    ``(conv -> [norm] -> activation -> [pool]) * len(channels) -> flatten -> mlp head``

    Convolutions take ``kernel_size`` and ``strides`` (an int, or ``(h, w)`` for rectangular
    ones); pooling takes ``pool_size`` windows (2x2 by default) with SAME padding, so odd sizes
    (7x7) shrink to ``ceil(H / 2)``. Shapes: ``x: [N, H, W, C]`` -> ``[N, num_outputs]``.

    ``w_init`` is the initializer (or its name) of every kernel, convolutions included. ``None``
    chooses as :func:`mlp` does: He normal for the convolutions and hidden dense layers after
    ``relu``, ``gelu`` or ``softplus``, Glorot uniform after the others, and Glorot uniform for
    the output layer (:func:`~fntrain.nn.conv2d` defaults to He normal, :func:`~fntrain.nn.dense`
    to LeCun normal).
    """
    return _conv_net(
        lambda c, init: L.conv2d(c, kernel_size, strides=strides, w_init=init),
        channels, num_outputs, pool=pool, pool_size=pool_size, hidden_sizes=hidden_sizes,
        activation=activation, dropout_rate=dropout_rate, norm=norm, w_init=w_init,
    )


def cnn1d(
    channels: Sequence[int],
    num_outputs: int,
    *,
    kernel_size: int = 5,
    strides: int = 1,
    pool: Optional[str] = "max",
    pool_size: int = 2,
    hidden_sizes: Sequence[int] = (128,),
    activation: str = "relu",
    dropout_rate: float = 0.0,
    norm: Optional[str] = None,
    w_init: Optional[initializers.InitializerLike] = None,
) -> Module:
    """A small 1-D convolutional network for sequences, :func:`cnn` with :func:`~fntrain.nn.conv1d`.

    ``as_sequence -> (conv1d -> [norm] -> activation -> [pool]) * len(channels) -> flatten -> mlp head``

    Shapes: ``x: [N, L, C]`` (or ``[N, L]``, one channel) -> ``[N, num_outputs]``. ``w_init``
    as for :func:`cnn`.
    """
    return _conv_net(
        lambda c, init: L.conv1d(c, kernel_size, strides=strides, w_init=init),
        channels, num_outputs, pool=pool, pool_size=pool_size, hidden_sizes=hidden_sizes,
        activation=activation, dropout_rate=dropout_rate, norm=norm, w_init=w_init, first=[L.as_sequence],
    )


_CELLS = {"gru": R.gru, "lstm": R.lstm}


def rnn(
    num_outputs: int,
    *,
    cell: str = "gru",
    hidden_size: int = 64,
    num_layers: int = 1,
    dropout_rate: float = 0.0,
) -> Module:
    """A recurrent network for sequence classification and regression.

    ``as_sequence -> (cell -> [dropout]) * num_layers -> dense``: stacked :func:`~fntrain.nn.gru`
    or :func:`~fntrain.nn.lstm` layers (each but the last returning its whole sequence), and a
    dense layer on the last layer's final state.

    Shapes: ``x: [N, T, F]``, ``[N, T]`` (one feature per step) or ``[N, T, ...]`` (flattened per
    step, e.g. image rows as time steps) -> ``[N, num_outputs]``.

    Args:
      num_outputs: width of the output layer (classes, or regression targets).
      cell: ``"gru"`` or ``"lstm"``.
      hidden_size: the state width ``H`` of every layer.
      num_layers: stacked recurrent layers.
      dropout_rate: dropout after each recurrent layer in training.
    """
    if cell not in _CELLS:
        raise ValueError(f"rnn cell must be one of {sorted(_CELLS)}, got {cell!r}")
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"rnn num_layers must be a positive int, got {num_layers!r}")
    layers: list[Module] = [L.as_sequence]
    for i in range(num_layers):
        layers.append(_CELLS[cell](hidden_size, return_sequences=i < num_layers - 1))
        if not known_zero(dropout_rate):
            layers.append(L.dropout(dropout_rate))
    layers.append(L.dense(num_outputs, w_init="glorot_uniform"))
    return serial(*layers)


_POSITIONS = {"learned": A.learned_position_embedding, "sinusoidal": A.sinusoidal_position_embedding}


def transformer_lm(
    vocab_size: int,
    seq_len: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    *,
    dropout_rate: float = 0.0,
    position: str = "learned",
) -> Module:
    """A decoder-only (causal) transformer language model.

    ``ids -> embed -> pos -> block_0 .. block_{L-1} -> norm -> head``: token embedding,
    position embedding, ``num_layers`` pre-norm causal :func:`~fntrain.nn.transformer_block`,
    a final layer norm and a dense layer to next-token logits. Position ``t``'s logits
    depend only on tokens ``<= t``.

    Shapes: ``ids: [B, T] int`` with ``T <= seq_len`` -> ``logits: [B, T, vocab_size] float32``.
    Train it with ``losses.softmax_cross_entropy`` on labels ``[B, T] int`` (the ids shifted by one).

    Args:
      vocab_size: number of token ids.
      seq_len: longest sequence (the size of the position table).
      d_model: width ``D`` of the residual stream; divisible by ``num_heads``.
      num_layers: number of transformer blocks.
      num_heads: attention heads per block.
      mlp_dim: hidden width of each block's MLP.
      dropout_rate: residual dropout inside the blocks (training only; needs a key).
      position: ``"learned"`` (param ``pos/table: [seq_len, D]``) or ``"sinusoidal"`` (no params).

    Example:
      >>> net = transformer_lm(vocab_size=64, seq_len=32, d_model=64, num_layers=2, num_heads=4, mlp_dim=256)
      >>> params, state = net.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))
      >>> logits, _ = net.apply(params, state, ids)  # [B, 32, 64]
    """
    if position not in _POSITIONS:
        raise ValueError(f"transformer_lm position must be one of {sorted(_POSITIONS)}, got {position!r}")
    if not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"transformer_lm num_layers must be a non-negative int, got {num_layers!r}")
    if d_model % num_heads:
        raise ValueError(
            f"transformer_lm d_model={d_model} is not divisible by num_heads={num_heads}; "
            "choose num_heads dividing d_model."
        )
    layers = [
        ("embed", L.embedding(vocab_size, d_model)),
        ("pos", _POSITIONS[position](seq_len)),
    ]
    layers += [
        (f"block_{i}", B.transformer_block(num_heads, mlp_dim, causal=True, dropout_rate=dropout_rate))
        for i in range(num_layers)
    ]
    layers += [("norm", L.layer_norm()), ("head", L.dense(vocab_size))]
    return B.named_serial(*layers)


def resnet(
    stage_sizes: Sequence[int] = (2, 2),
    num_filters: int = 16,
    num_outputs: int = 10,
    *,
    block: str = "basic",
) -> Module:
    """A small ResNet for NHWC images of about 8x8 to 32x32 (CIFAR-style, no stem pooling).

    ``stem_conv (3x3) -> stem_bn -> relu -> stage_i_block_j ... -> global average pool -> head``.
    Stage ``i`` has ``num_filters * 2**i`` channels and ``stage_sizes[i]`` blocks; the first
    block of every stage after the first halves the resolution (stride 2) and projects
    its shortcut (see :func:`~fntrain.nn.basic_block`).

    Shapes: ``x: [N, H, W, C]`` -> ``[N, num_outputs]`` logits.

    Args:
      stage_sizes: number of blocks per stage.
      num_filters: channels of the stem and the first stage.
      num_outputs: number of outputs (classes).
      block: residual block type; only ``"basic"`` for now.

    Parameter keys read like ``stage_1_block_0/proj_conv/w``; batch-norm statistics are in
    the state under the same paths (``stem_bn/mean``, ``stage_0_block_1/bn_0/var``).
    """
    if block != "basic":
        raise ValueError(f"resnet block must be 'basic', got {block!r}")
    if not stage_sizes or any(not isinstance(n, int) or n < 1 for n in stage_sizes):
        raise ValueError(f"resnet stage_sizes must be a non-empty sequence of positive ints, got {stage_sizes!r}")
    layers = [
        ("stem_conv", L.conv2d(num_filters, 3, use_bias=False)),
        ("stem_bn", L.batch_norm()),
        ("stem_relu", L.relu),
    ]
    for i, num_blocks in enumerate(stage_sizes):
        for j in range(num_blocks):
            strides = 2 if i > 0 and j == 0 else 1
            layers.append((f"stage_{i}_block_{j}", B.basic_block(num_filters * 2**i, strides=strides)))
    layers += [("pool", L.global_avg_pool()), ("head", L.dense(num_outputs, w_init="glorot_uniform"))]
    return B.named_serial(*layers)
