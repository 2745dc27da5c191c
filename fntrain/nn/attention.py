"""Attention and position embeddings for sequences ``x: [B, T, D]``.

Heads are a separate axis, ``[B, T, H, Dh]``, everywhere inside; masks are
boolean with ``True`` meaning "may attend".
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from fntrain.nn import initializers
from fntrain.nn import layers as L
from fntrain.nn.core import Module
from fntrain.nn.matmul import matmul, transposed


def _require_sequence(layer: str, x):
    if len(x.shape) != 3:
        raise ValueError(
            f"{layer} expects sequences [batch, time, features], got shape {tuple(x.shape)}; "
            "embed token ids first (nn.embedding) or add a batch axis with x[None]."
        )


@jax.custom_vjp
def _softmax(logits: jax.Array) -> jax.Array:
    """``jax.nn.softmax(logits, axis=-1)``, the same numbers, with a hand-written backward pass.

    The backward pass is ``w * (g - sum(g * w, axis=-1))`` from the saved output ``w`` alone.
    Differentiating ``jax.nn.softmax`` instead made the W4 transformer's gradient ~8% slower on
    XLA:CPU (``scripts/bench_transformer.py``): its transposed JVP takes more passes over the
    ``[B, H, Tq, Tk]`` arrays, the largest in the model. Forward-mode autodiff (``jax.jvp``)
    is not available through it.
    """
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _softmax_fwd(logits):
    weights = _softmax(logits)
    return weights, weights


def _softmax_bwd(weights, g):
    return (weights * (g - jnp.sum(g * weights, axis=-1, keepdims=True)),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


@jax.custom_vjp
def _scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """``q k^T`` per head: ``q [B, H, Tq, D]``, ``k [B, H, Tk, D]`` -> ``[B, H, Tq, Tk]``.

    The backward pass is autodiff's, but ``dk = g^T q`` reads a transposed copy of ``g``
    (:func:`~fntrain.nn.matmul.transposed`). With :func:`_mix`, the W4 transformer's train
    step is 3-5% faster on XLA:CPU.
    """
    return jnp.einsum("bhqd,bhkd->bhqk", q, k)


def _scores_fwd(q, k):
    return _scores(q, k), (q, k)


def _scores_bwd(residuals, g):
    q, k = residuals
    return jnp.einsum("bhqk,bhkd->bhqd", g, k), jnp.einsum("bhkq,bhqd->bhkd", transposed(g), q)


_scores.defvjp(_scores_fwd, _scores_bwd)


@jax.custom_vjp
def _mix(weights: jax.Array, v: jax.Array) -> jax.Array:
    """``weights v`` per head: ``weights [B, H, Tq, Tk]``, ``v [B, H, Tk, Dv]`` -> ``[B, H, Tq, Dv]``.

    The backward pass reads a transposed copy of ``weights`` for ``dv = weights^T g``, as
    :func:`_scores` does.
    """
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


def _mix_fwd(weights, v):
    return _mix(weights, v), (weights, v)


def _mix_bwd(residuals, g):
    weights, v = residuals
    return jnp.einsum("bhqd,bhkd->bhqk", g, v), jnp.einsum("bhkq,bhqd->bhkd", transposed(weights), g)


_mix.defvjp(_mix_fwd, _mix_bwd)


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, mask: Optional[jax.Array] = None
) -> jax.Array:
    """Scaled dot-product attention, per head: ``softmax(q k^T / sqrt(Dh)) v``.

    The logits and softmax are computed in at least float32 (float64 inputs stay
    float64); the result has ``v``'s dtype. Masked logits are set to the dtype's
    most negative finite value rather than ``-inf``, so a masked key gets weight
    exactly 0 and a row with every key masked averages all values instead of
    giving NaN.

    Args:
      q: ``[B, Tq, H, Dh]`` queries.
      k: ``[B, Tk, H, Dh]`` keys.
      v: ``[B, Tk, H, Dv]`` values.
      mask: optional bool, broadcastable to ``[B, H, Tq, Tk]``; ``True`` = query may attend
        to key. E.g. causal ``jnp.tril(jnp.ones((T, T), bool))`` or key padding
        ``pad[:, None, None, :]``.

    Returns:
      ``[B, Tq, H, Dv]``.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"dot_product_attention expects q, k, v of shape [batch, time, heads, head_dim], "
            f"got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit; expected "
            "q [B, Tq, H, Dh], k [B, Tk, H, Dh], v [B, Tk, H, Dv]."
        )
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    out_dtype = v.dtype
    q, k, v = (jnp.swapaxes(a.astype(dtype), 1, 2) for a in (q, k, v))  # [B, H, T, D]
    logits = _scores(q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        if mask.dtype != jnp.bool_:
            raise TypeError(
                f"dot_product_attention mask must be bool (True = attend), got dtype {mask.dtype}; "
                "convert with mask.astype(bool) or mask != 0."
            )
        try:
            jnp.broadcast_shapes(mask.shape, logits.shape)
        except ValueError:
            raise ValueError(
                f"dot_product_attention mask of shape {mask.shape} does not broadcast to "
                f"[B, H, Tq, Tk] = {logits.shape}; a key padding mask [B, Tk] needs mask[:, None, None, :]."
            ) from None
        logits = jnp.where(mask, logits, jnp.finfo(dtype).min)
    weights = _softmax(logits)
    return jnp.swapaxes(_mix(weights, v), 1, 2).astype(out_dtype)


def _causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal :func:`dot_product_attention` of ``q, k, v: [B, T, H, D*]`` that skips the masked top-right block.

    A query in the first half (``t < T // 2``) sees only keys in the first half, so it is
    attended over those alone: 3/4 of the logits, softmax and matmul work of the full
    ``[T, T]`` square, and the W4 transformer's gradient ~6% faster on XLA:CPU. The result is
    the same: the skipped logits would get weight exactly 0 (every query sees at least itself).
    """
    t = q.shape[1]
    m = t // 2
    causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
    first = dot_product_attention(q[:, :m], k[:, :m], v[:, :m], mask=causal[:m, :m])
    second = dot_product_attention(q[:, m:], k, v, mask=causal[m:])
    return jnp.concatenate([first, second], axis=1)


def _project(params, x):
    y = matmul(x, params["w"])
    return y + params["b"] if "b" in params else y


def multi_head_attention(
    num_heads: int,
    *,
    causal: bool = False,
    head_dim: Optional[int] = None,
    use_bias: bool = True,
    w_init: initializers.InitializerLike = "lecun_normal",
) -> Module:
    """Multi-head self-attention over ``x: [B, T, D]`` -> ``[B, T, D]``.

    ``q, k, v = x @ w_q + b_q, ...``, split into ``num_heads`` heads of ``head_dim``,
    attended with :func:`dot_product_attention`, merged and projected back by ``o``.

    Params (separate, not fused, so each is a plain dense layer)::

        q, k, v: {"w": [D, num_heads * head_dim], "b": [num_heads * head_dim]}
        o:       {"w": [num_heads * head_dim, D], "b": [D]}

    (no ``b`` with ``use_bias=False``). Head ``h`` uses columns ``h * head_dim:(h + 1) * head_dim``.

    Args:
      num_heads: number of heads ``H``.
      causal: if True, position ``t`` attends only to positions ``<= t``.
      head_dim: per-head size ``Dh``; ``None`` means ``D // num_heads`` (``D`` must then divide).
      use_bias: add biases to the four projections.
      w_init: initializer of the four projection kernels.

    ``apply(params, state, x, *, train=False, key=None, mask=None)`` also takes an optional
    key padding ``mask: [B, T] bool`` (``True`` = real token): no position attends to a masked
    one. Outputs at masked positions are still computed (from the real keys) and are usually
    ignored by the loss. :func:`~fntrain.nn.serial` does not pass ``mask``; call ``apply`` directly.
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"multi_head_attention num_heads must be a positive int, got {num_heads!r}")
    if head_dim is not None and (not isinstance(head_dim, int) or head_dim < 1):
        raise ValueError(f"multi_head_attention head_dim must be a positive int or None, got {head_dim!r}")

    def init(key, x):
        _require_sequence("multi_head_attention", x)
        d = x.shape[-1]
        if head_dim is None and d % num_heads:
            raise ValueError(
                f"multi_head_attention: model width {d} is not divisible by num_heads={num_heads}; "
                "choose num_heads dividing it or pass head_dim explicitly."
            )
        inner = num_heads * (head_dim or d // num_heads)
        kq, kk, kv, ko = jax.random.split(key, 4)
        proj = L.dense(inner, use_bias=use_bias, w_init=w_init)
        params = {"q": proj.init(kq, x)[0], "k": proj.init(kk, x)[0], "v": proj.init(kv, x)[0]}
        inner_x = jax.ShapeDtypeStruct((*x.shape[:-1], inner), x.dtype)
        params["o"] = L.dense(d, use_bias=use_bias, w_init=w_init).init(ko, inner_x)[0]
        return params, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        del train, key  # no randomness: dropout lives in the block around the attention
        _require_sequence("multi_head_attention", x)
        b, t, _ = x.shape

        def heads(p):
            return _project(p, x).reshape(b, t, num_heads, -1)

        full = None
        if causal:
            full = jnp.tril(jnp.ones((t, t), jnp.bool_))[None, None]
        if mask is not None:
            if mask.shape != (b, t) or mask.dtype != jnp.bool_:
                raise ValueError(
                    f"multi_head_attention mask must be a bool key padding mask [batch, time] = {(b, t)} "
                    f"(True = real token), got {mask.dtype} {tuple(mask.shape)}."
                )
            padding = mask[:, None, None, :]
            full = padding if full is None else full & padding
        q, k, v = heads(params["q"]), heads(params["k"]), heads(params["v"])
        if causal and mask is None and t > 1:
            y = _causal_attention(q, k, v)
        else:
            y = dot_product_attention(q, k, v, mask=full)
        return _project(params["o"], y.reshape(b, t, -1)), state

    return Module(init, apply, "multi_head_attention")


def _check_length(layer: str, x, max_len: int):
    _require_sequence(layer, x)
    if x.shape[1] > max_len:
        raise ValueError(
            f"{layer}: sequence length {x.shape[1]} exceeds max_len={max_len}; "
            f"build it with max_len >= {x.shape[1]} or feed shorter sequences."
        )


def sinusoidal_position_embedding(max_len: int) -> Module:
    """Adds the fixed sinusoids of "Attention is all you need" to ``x: [B, T, D]``; no params.

    ``pe[t, 2i] = sin(t / 10000^(2i / D))`` and ``pe[t, 2i + 1] = cos(t / 10000^(2i / D))``;
    ``y = x + pe[:T]``. ``max_len`` only bounds ``T`` (longer inputs are an error).
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"sinusoidal_position_embedding max_len must be a positive int, got {max_len!r}")

    def init(key, x):
        _check_length("sinusoidal_position_embedding", x, max_len)
        return {}, {}

    def apply(params, state, x, *, train=False, key=None):
        _check_length("sinusoidal_position_embedding", x, max_len)
        t, d = x.shape[1], x.shape[2]
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        inv_freq = 10000.0 ** (-2.0 * jnp.arange((d + 1) // 2, dtype=dtype) / d)  # [ceil(D/2)]
        angles = jnp.arange(t, dtype=dtype)[:, None] * inv_freq  # [T, ceil(D/2)]
        pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(t, -1)[:, :d]
        return x + pe.astype(x.dtype), state

    return Module(init, apply, "sinusoidal_position_embedding")


def learned_position_embedding(
    max_len: int, *, w_init: initializers.InitializerLike = initializers.normal(0.02)
) -> Module:
    """Adds a learned vector per position to ``x: [B, T, D]``: ``y = x + table[:T]``.

    Params: ``table: [max_len, D]``. Inputs longer than ``max_len`` are an error.
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"learned_position_embedding max_len must be a positive int, got {max_len!r}")
    w_init = initializers.get(w_init)

    def init(key, x):
        _check_length("learned_position_embedding", x, max_len)
        return {"table": w_init(key, (max_len, x.shape[-1]), L._param_dtype(x))}, {}

    def apply(params, state, x, *, train=False, key=None):
        _check_length("learned_position_embedding", x, max_len)
        return x + params["table"][: x.shape[1]], state

    return Module(init, apply, "learned_position_embedding")
