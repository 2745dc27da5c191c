"""Attention and position embeddings for sequences ``x: [B, T, D]``.

Heads are a separate axis, ``[B, T, H, Dh]``, everywhere inside; masks are
boolean with ``True`` meaning "may attend".
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from fntrain.nn import _cpu, initializers
from fntrain.nn import layers as L
from fntrain.nn.core import Module
from fntrain.nn.matmul import matmul


def _require_sequence(layer: str, x):
    if len(x.shape) != 3:
        raise ValueError(
            f"{layer} expects sequences [batch, time, features], got shape {tuple(x.shape)}; "
            "embed token ids first (nn.embedding) or add a batch axis with x[None]."
        )


def _jax_nn_attention(q, k, v, mask, *, causal: bool, cudnn: bool) -> jax.Array:
    """:func:`dot_product_attention` by ``jax.nn.dot_product_attention``: cuDNN's fused kernel or XLA's composite.

    With ``cudnn`` and bfloat16 or float16 inputs it asks for cuDNN's fused attention; where
    that cannot be had (no cuDNN at trace time, as when exporting for CUDA on a machine
    without a GPU; a shape, head size or mask cuDNN does not take) and for every other input
    it uses XLA's composite. jax wants one dtype and one head size for ``q``, ``k`` and ``v``:
    they are promoted to a common dtype, and zero columns appended to the narrower heads
    change neither the logits nor the outputs kept.
    """
    dtype, out_dtype = jnp.result_type(q, k, v), v.dtype
    dh, dv = q.shape[-1], v.shape[-1]
    width = max(dh, dv)

    def widen(a):
        a = a.astype(dtype)
        return a if a.shape[-1] == width else jnp.pad(a, [(0, 0)] * 3 + [(0, width - a.shape[-1])])

    q, k, v = widen(q), widen(k), widen(v)
    kwargs = dict(mask=mask, scale=1.0 / math.sqrt(dh), is_causal=causal)
    y = None
    if cudnn and dtype in (jnp.bfloat16, jnp.float16):
        try:
            y = jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kwargs)
        except (NotImplementedError, RuntimeError, ValueError, TypeError):
            pass  # raised while tracing, before cuDNN's call is staged out
    if y is None:
        y = jax.nn.dot_product_attention(q, k, v, implementation="xla", **kwargs)
    return y[..., :dv].astype(out_dtype)


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, mask: Optional[jax.Array] = None, causal: bool = False
) -> jax.Array:
    """Scaled dot-product attention, per head: ``softmax(q k^T / sqrt(Dh)) v``.

    Masked logits are set to a large negative finite value rather than ``-inf``, so a masked
    key gets weight exactly 0 and a row with every key masked averages all values instead of
    giving NaN. The result has ``v``'s dtype.

    The kernel depends on the platform the computation is lowered for
    (``jax.lax.platform_dependent``). On XLA:CPU it is fntrain's own (``fntrain/nn/_cpu.py``):
    logits, softmax and mixing in at least float32 (float64 stays float64), with hand-written
    backward passes. Elsewhere it is ``jax.nn.dot_product_attention``: on CUDA with
    bfloat16/float16 inputs cuDNN's fused attention where cuDNN takes the shapes, otherwise
    XLA's composite, whose logits and softmax are float32 and whose mixing runs in the inputs'
    dtype. Every platform's kernel is traced, so ``jax.grad`` and ``jax.vmap`` work, but
    forward-mode autodiff (``jax.jvp``) does not: the CPU kernel's backward pass is
    hand-written.

    Args:
      q: ``[B, Tq, H, Dh]`` queries.
      k: ``[B, Tk, H, Dh]`` keys.
      v: ``[B, Tk, H, Dv]`` values.
      mask: optional bool, broadcastable to ``[B, H, Tq, Tk]``; ``True`` = query may attend
        to key. E.g. key padding ``pad[:, None, None, :]``.
      causal: if True, query ``i`` attends only to keys ``<= i`` (and to what ``mask`` allows).

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
    if mask is not None:
        _check_mask(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    kernels = {
        "cpu": functools.partial(_cpu.attention, causal=causal),
        "default": functools.partial(_jax_nn_attention, causal=causal, cudnn=False),
    }
    if jnp.result_type(q, k, v) in (jnp.bfloat16, jnp.float16):  # cuDNN's fused attention takes no other
        kernels["cuda"] = functools.partial(_jax_nn_attention, causal=causal, cudnn=True)
    return lax.platform_dependent(q, k, v, mask, **kernels)


def _check_mask(mask, logits_shape: tuple[int, ...]):
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"dot_product_attention mask must be bool (True = attend), got dtype {mask.dtype}; "
            "convert with mask.astype(bool) or mask != 0."
        )
    try:
        jnp.broadcast_shapes(mask.shape, logits_shape)
    except ValueError:
        raise ValueError(
            f"dot_product_attention mask of shape {mask.shape} does not broadcast to "
            f"[B, H, Tq, Tk] = {logits_shape}; a key padding mask [B, Tk] needs mask[:, None, None, :]."
        ) from None


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

        padding = None
        if mask is not None:
            if mask.shape != (b, t) or mask.dtype != jnp.bool_:
                raise ValueError(
                    f"multi_head_attention mask must be a bool key padding mask [batch, time] = {(b, t)} "
                    f"(True = real token), got {mask.dtype} {tuple(mask.shape)}."
                )
            padding = mask[:, None, None, :]
        q, k, v = heads(params["q"]), heads(params["k"]), heads(params["v"])
        y = dot_product_attention(q, k, v, mask=padding, causal=causal)
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
