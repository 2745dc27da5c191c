"""Convolution and attention kernels written for XLA:CPU.

:func:`fntrain.nn.layers.conv2d_nhwc` and :func:`fntrain.nn.attention.dot_product_attention`
run these under ``lax.platform_dependent`` when the computation is lowered for CPU; on GPU
and TPU they run XLA's convolution and ``jax.nn.dot_product_attention`` instead. There
these kernels would be the wrong choice: im2col takes ``kh * kw`` times the activation
memory where cuDNN's convolution needs none, and the hand-written attention keeps cuDNN's
fused attention out.

Why each kernel pays on XLA:CPU (2 cores, ``jax`` 0.10.2, ``scripts/BENCHMARKS.md``):

- :func:`conv2d_im2col`, a convolution as one matmul of image patches with the kernel.
  XLA:CPU's kernel-gradient convolution is a naive loop, 50x slower inside a ``lax.scan``
  (fused steps) and ~600 ms of the hand-written W3 CNN step's 800 ms without one. For W3's
  ``conv3x3 32->64`` on ``[128, 28, 28, 32]`` the forward pass and gradient take 111 ms
  against 685 ms for ``lax.conv_general_dilated``; the W3 step is 5.3x the hand-written one.
- :func:`_softmax`, a softmax with a hand-written backward pass: the W4 transformer's
  gradient ~8% faster (``scripts/bench_transformer.py``).
- :func:`_scores` and :func:`_mix`, the attention matmuls whose backward passes read
  transposed copies (:func:`~fntrain.nn.matmul.transposed`): with ``nn.matmul``'s flattened
  weight gradients, the W4 step ~135 -> ~110 ms.
- :func:`causal_attention`, causal attention that skips the masked top-right block: 3/4 of
  the work and the W4 gradient ~6% faster.

Each returns the same numbers as the plain formula, up to float32 rounding (tests/test_conv.py,
tests/test_zoo.py).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from fntrain.nn.matmul import matmul, transposed

# --------------------------------------------------------------------------- convolution


def _out_size_and_pads(size: int, k: int, stride: int, padding: str) -> tuple[int, tuple[int, int]]:
    """Output length and (low, high) zero padding along one spatial axis, as XLA defines them."""
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, (total // 2, total - total // 2)
    return -(-(size - k + 1) // stride), (0, 0)


def _patches(x, kernel: tuple[int, int], strides: tuple[int, int], padding: str):
    """The input window under each output position, kernel taps concatenated on the channel axis.

    Shapes: ``x: [N, H, W, C]`` -> ``[N, H', W', kh * kw * C]``, channel index
    ``(i * kw + j) * C + c`` for tap ``(i, j)``: the row order of ``w.reshape(-1, F)``.
    """
    (kh, kw), (sh, sw) = kernel, strides
    out_h, pad_h = _out_size_and_pads(x.shape[1], kh, sh, padding)
    out_w, pad_w = _out_size_and_pads(x.shape[2], kw, sw, padding)
    xp = jnp.pad(x, [(0, 0), pad_h, pad_w, (0, 0)])
    taps = [
        xp[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(taps, axis=-1)


def conv2d_im2col(x, w, strides: tuple[int, int], padding: str):
    """Cross-correlation over NHWC/HWIO as one matmul of image patches (im2col) with the kernel.

    Equals ``lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC",
    "HWIO", "NHWC"))``. The kernel gradient is ``patches^T @ g`` and the input gradient is
    ``g @ w^T`` scattered back by the transposes of the slices. It is plain ``jnp``, so every
    autodiff mode (``jax.grad``, ``jax.jvp``, ``jax.hessian``) and ``jax.vmap`` work.

    The patches take ``kh * kw`` times the memory of ``x`` (for a 3x3 kernel on
    ``[128, 28, 28, 32]`` float32, 115 MB), kept for the backward pass.

    Shapes: ``x: [N, H, W, C]``, ``w: [kh, kw, C, F]`` -> ``[N, H', W', F]``, dtype of ``x``.
    """
    kh, kw, c, f = w.shape
    patches = _patches(x, (kh, kw), strides, padding)
    y = matmul(patches.reshape(-1, kh * kw * c), w.reshape(kh * kw * c, f))
    return y.reshape(*patches.shape[:3], f)


# --------------------------------------------------------------------------- attention


@jax.custom_vjp
def _softmax(logits: jax.Array) -> jax.Array:
    """``jax.nn.softmax(logits, axis=-1)``, the same numbers, with a hand-written backward pass.

    The backward pass is ``w * (g - sum(g * w, axis=-1))`` from the saved output ``w`` alone.
    Autodiff of ``jax.nn.softmax`` takes more passes over the ``[B, H, Tq, Tk]`` arrays, the
    largest in the model. Forward-mode autodiff (``jax.jvp``) is not available through it.
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
    instead of contracting over the leading axis of both operands.
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


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    """``softmax(q k^T / sqrt(Dh)) v`` per head in at least float32, by :func:`_scores`, :func:`_softmax`, :func:`_mix`.

    Masked logits are set to the dtype's most negative finite value rather than ``-inf``, so
    a masked key gets weight exactly 0 and a row with every key masked averages all values.

    Shapes: ``q: [B, Tq, H, Dh]``, ``k: [B, Tk, H, Dh]``, ``v: [B, Tk, H, Dv]``, ``mask``
    bool broadcastable to ``[B, H, Tq, Tk]`` or None -> ``[B, Tq, H, Dv]``, dtype of ``v``.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    out_dtype = v.dtype
    q, k, v = (jnp.swapaxes(a.astype(dtype), 1, 2) for a in (q, k, v))  # [B, H, T, D]
    logits = _scores(q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(dtype).min)
    weights = _softmax(logits)
    return jnp.swapaxes(_mix(weights, v), 1, 2).astype(out_dtype)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal :func:`dot_product_attention` of ``q, k, v: [B, T, H, D*]`` that skips the masked top-right block.

    A query in the first half (``t < T // 2``) sees only keys in the first half, so it is
    attended over those alone: 3/4 of the logits, softmax and matmul work of the full
    ``[T, T]`` square. The result is the same: the skipped logits would get weight exactly 0
    (every query sees at least itself).
    """
    t = q.shape[1]
    m = t // 2
    causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
    first = dot_product_attention(q[:, :m], k[:, :m], v[:, :m], causal[:m, :m])
    second = dot_product_attention(q[:, m:], k, v, causal[m:])
    return jnp.concatenate([first, second], axis=1)


def attention(q, k, v, mask: Optional[jax.Array], *, causal: bool) -> jax.Array:
    """:func:`dot_product_attention`, optionally causal: by :func:`causal_attention` when nothing else is masked.

    Shapes as for :func:`dot_product_attention`; ``causal`` lets query ``i`` see keys ``<= i``.
    """
    tq, tk = q.shape[1], k.shape[1]
    if causal and mask is None and tq == tk and tq > 1:
        return causal_attention(q, k, v)
    if causal:
        tril = jnp.tril(jnp.ones((tq, tk), jnp.bool_))[None, None]
        mask = tril if mask is None else tril & mask
    return dot_product_attention(q, k, v, mask)
