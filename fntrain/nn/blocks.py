"""Composite blocks: a residual block with a projection shortcut and a pre-norm transformer block.

Both keep their sub-layers' parameters under short readable names (``conv_0``,
``bn_0``, ``proj_conv``; ``attn_norm``, ``attn``, ``mlp_in``), which is what
:func:`named_serial` is for.
"""

from __future__ import annotations

from typing import Optional

import jax

from fntrain.nn import layers as L
from fntrain.nn.attention import _project, multi_head_attention
from fntrain.nn.core import Module, named_serial


def basic_block(features: int, *, strides: int = 1) -> Module:
    """The ResNet basic block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    Both convolutions are 3x3 without bias (batch norm supplies the offset); the first
    has ``strides``. The shortcut is the identity when the shape is kept, and a strided
    1x1 conv + batch norm projection when ``strides != 1`` or the channel count changes.
    Batch-norm statistics of all (up to three) batch norms are threaded through ``state``.

    Shapes: ``x: [N, H, W, C]`` -> ``[N, ceil(H / strides), ceil(W / strides), features]``.

    Params (state has the same ``bn`` keys with ``mean, var``)::

        conv_0: {w: [3, 3, C, F]}    bn_0: {scale, offset: [F]}
        conv_1: {w: [3, 3, F, F]}    bn_1: {scale, offset: [F]}
        proj_conv: {w: [1, 1, C, F]}  proj_bn: {scale, offset: [F]}   # projection only
    """
    if not isinstance(strides, int) or strides < 1:
        raise ValueError(f"basic_block strides must be a positive int, got {strides!r}")
    branch = named_serial(
        ("conv_0", L.conv2d(features, 3, strides=strides, use_bias=False)),
        ("bn_0", L.batch_norm()),
        ("relu", L.relu),
        ("conv_1", L.conv2d(features, 3, use_bias=False)),
        ("bn_1", L.batch_norm()),
    )
    projection = named_serial(
        ("proj_conv", L.conv2d(features, 1, strides=strides, use_bias=False)),
        ("proj_bn", L.batch_norm()),
    )

    def projects(x) -> bool:
        return strides != 1 or x.shape[-1] != features

    def init(key, x):
        branch_key, proj_key = jax.random.split(key)
        params, state = branch.init(branch_key, x)
        if projects(x):
            p, s = projection.init(proj_key, x)
            params, state = {**params, **p}, {**state, **s}
        return params, state

    def apply(params, state, x, *, train=False, key=None):
        y, new_state = branch.apply(params, state, x, train=train, key=key)
        shortcut = x
        if projects(x):
            shortcut, s = projection.apply(params, state, x, train=train, key=key)
            new_state = {**new_state, **s}
        return jax.nn.relu(y + shortcut), new_state

    return Module(init, apply, "basic_block", (branch, projection))


def transformer_block(
    num_heads: int, mlp_dim: int, *, causal: bool = True, dropout_rate: float = 0.0
) -> Module:
    """A pre-norm transformer block on ``x: [B, T, D]`` -> ``[B, T, D]``::

        x = x + dropout(attn(layer_norm(x)))
        x = x + dropout(mlp_out(gelu(mlp_in(layer_norm(x)))))

    Args:
      num_heads: attention heads; ``D`` must be divisible by it.
      mlp_dim: hidden width of the MLP.
      causal: position ``t`` attends only to positions ``<= t`` (language models).
      dropout_rate: dropout on both residual branches in training; with a positive rate,
        ``apply(..., train=True)`` needs ``key``.

    Params::

        attn_norm, mlp_norm: {scale, offset: [D]}
        attn: see :func:`~fntrain.nn.multi_head_attention`
        mlp_in: {w: [D, mlp_dim], b: [mlp_dim]}    mlp_out: {w: [mlp_dim, D], b: [D]}

    ``apply(params, state, x, *, train=False, key=None, mask=None)`` passes an optional key
    padding ``mask: [B, T] bool`` on to the attention.
    """
    if not isinstance(mlp_dim, int) or mlp_dim < 1:
        raise ValueError(f"transformer_block mlp_dim must be a positive int, got {mlp_dim!r}")
    attn_norm, mlp_norm = L.layer_norm(), L.layer_norm()
    attn = multi_head_attention(num_heads, causal=causal)
    mlp_in = L.dense(mlp_dim)
    drop = L.dropout(dropout_rate)

    def init(key, x):
        if len(x.shape) != 3:
            raise ValueError(f"transformer_block expects [batch, time, features], got shape {tuple(x.shape)}")
        k_attn, k_in, k_out = jax.random.split(key, 3)
        hidden = jax.ShapeDtypeStruct((*x.shape[:-1], mlp_dim), x.dtype)
        params = {
            "attn_norm": attn_norm.init(None, x)[0],
            "attn": attn.init(k_attn, x)[0],
            "mlp_norm": mlp_norm.init(None, x)[0],
            "mlp_in": mlp_in.init(k_in, x)[0],
            "mlp_out": L.dense(x.shape[-1]).init(k_out, hidden)[0],
        }
        return params, {}

    def apply(params, state, x, *, train=False, key=None, mask: Optional[jax.Array] = None):
        k_attn, k_mlp = (None, None) if key is None else jax.random.split(key)
        h, _ = attn_norm.apply(params["attn_norm"], {}, x)
        h, _ = attn.apply(params["attn"], {}, h, mask=mask)
        h, _ = drop.apply({}, {}, h, train=train, key=k_attn)
        x = x + h
        h, _ = mlp_norm.apply(params["mlp_norm"], {}, x)
        h = _project(params["mlp_out"], jax.nn.gelu(_project(params["mlp_in"], h)))
        h, _ = drop.apply({}, {}, h, train=train, key=k_mlp)
        return x + h, state

    return Module(init, apply, "transformer_block", (attn_norm, attn, mlp_norm))
