"""Recurrent layers over sequences ``[N, T, F]``: :func:`gru` and :func:`lstm`, a ``lax.scan`` over time.

The cells follow PyTorch's equations and gate order (``torch.nn.GRU``, ``torch.nn.LSTM``), so
weights port over by concatenation: with ``x_t: [N, F]`` and the state ``h: [N, H]``::

    GRU, gates (r, z, n):                     LSTM, gates (i, f, g, o):
    r  = sigmoid(x Wx_r + bx_r + h Wh_r + bh_r)    i  = sigmoid(x Wx_i + h Wh_i + b_i)
    z  = sigmoid(x Wx_z + bx_z + h Wh_z + bh_z)    f  = sigmoid(x Wx_f + h Wh_f + b_f)
    n  = tanh(x Wx_n + bx_n + r * (h Wh_n + bh_n)) g  = tanh(x Wx_g + h Wh_g + b_g)
    h' = (1 - z) * n + z * h                        o  = sigmoid(x Wx_o + h Wh_o + b_o)
                                                    c' = f * c + i * g;  h' = o * tanh(c')

Params: ``wx: [F, G*H]`` and ``wh: [H, G*H]`` with the gates side by side in that order
(``G`` = 3 for the GRU, 4 for the LSTM); the GRU has ``bx, bh: [3H]`` (PyTorch's ``b_ih``,
``b_hh``), the LSTM one ``b: [4H]`` (PyTorch's ``b_ih + b_hh``). The input projection of every
step is one matmul before the scan; the scan does only ``h Wh`` per step.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from fntrain.nn import initializers
from fntrain.nn.core import Module
from fntrain.nn.layers import _param_dtype
from fntrain.nn.matmul import matmul

_orthogonal = jax.nn.initializers.orthogonal()


def _recurrent_init(key, shape, dtype):
    """``[H, G*H]``: one orthogonal ``[H, H]`` block per gate, which keeps ``h`` from growing or
    shrinking through many steps at the start."""
    h, gh = shape
    blocks = [_orthogonal(k, (h, h), dtype) for k in jax.random.split(key, gh // h)]
    return jnp.concatenate(blocks, axis=1)


def _require_sequence(layer: str, x) -> None:
    if len(x.shape) != 3:
        raise ValueError(
            f"{layer} expects sequences [N, T, F], got shape {tuple(x.shape)}; for one feature per step "
            "use x[..., None] (nn.as_sequence does this in a network)."
        )


def _check_hidden_size(layer: str, hidden_size: int) -> None:
    if not isinstance(hidden_size, int) or hidden_size < 1:
        raise ValueError(f"{layer} hidden_size must be a positive int, got {hidden_size!r}")


def _scan_over_time(cell: Callable, carry, xs, mask: Optional[jax.Array]):
    """Runs ``cell(carry, x_t) -> carry`` over ``xs: [N, T, ...]``; ``carry[0]`` is the output ``h``.

    A step where ``mask[:, t]`` is False keeps the carry and emits it again.
    Returns ``(last carry, hs: [N, T, H])``.
    """
    n, t = xs.shape[:2]
    if mask is None:
        mask = jnp.ones((n, t), jnp.bool_)
    elif mask.shape != (n, t):
        raise ValueError(f"mask must be [N, T] = {(n, t)} bool (True for real steps), got shape {tuple(mask.shape)}")

    def step(carry, inputs):
        x_t, m_t = inputs
        new = cell(carry, x_t)
        new = jax.tree.map(lambda a, b: jnp.where(m_t[:, None], a, b), new, carry)
        return new, new[0]

    carry, hs = lax.scan(step, carry, (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(mask, 0, 1)))
    return carry, jnp.swapaxes(hs, 0, 1)


def _layer(name: str, gates: int, hidden_size: int, cell_fn: Callable, bias_fn: Callable, *, return_sequences: bool, w_init) -> Module:
    w_init = initializers.get(w_init)

    def init(key, x):
        _require_sequence(name, x)
        dtype, f = _param_dtype(x), x.shape[-1]
        kx, kh = jax.random.split(key)
        params = {
            "wx": w_init(kx, (f, gates * hidden_size), dtype),
            "wh": _recurrent_init(kh, (hidden_size, gates * hidden_size), dtype),
            **bias_fn(dtype),
        }
        return params, {}

    def apply(params, state, x, *, train=False, key=None, mask: Optional[jax.Array] = None):
        _require_sequence(name, x)
        xs = matmul(x, params["wx"])  # [N, T, G*H]: every step's input projection at once
        carry, hs = cell_fn(params, xs, mask)
        return (hs if return_sequences else carry[0]), state

    return Module(init, apply, name)


def gru(
    hidden_size: int, *, return_sequences: bool = False, w_init: initializers.InitializerLike = "lecun_normal"
) -> Module:
    """A gated recurrent unit over ``x: [N, T, F]``, from ``h = 0`` (equations in the module docstring).

    Returns the last state ``[N, H]``, or every step's ``[N, T, H]`` with ``return_sequences``.
    ``apply(..., mask=m)`` takes ``m: [N, T] bool`` (True for real steps): a padded step keeps
    the state and repeats it as its output, so with padding at the end the last state is the
    one after each sequence's last real step.

    ``wx`` defaults to LeCun normal, ``wh`` to an orthogonal block per gate, biases to zeros.
    """
    _check_hidden_size("gru", hidden_size)
    h = hidden_size

    def biases(dtype):
        return {"bx": jnp.zeros((3 * h,), dtype), "bh": jnp.zeros((3 * h,), dtype)}

    def run(params, xs, mask):
        gx_all = xs + params["bx"]

        def cell(carry, gx):
            (state,) = carry
            gh = matmul(state, params["wh"]) + params["bh"]
            r = jax.nn.sigmoid(gx[:, :h] + gh[:, :h])
            z = jax.nn.sigmoid(gx[:, h : 2 * h] + gh[:, h : 2 * h])
            n = jnp.tanh(gx[:, 2 * h :] + r * gh[:, 2 * h :])
            return ((1.0 - z) * n + z * state,)

        return _scan_over_time(cell, (jnp.zeros((xs.shape[0], h), xs.dtype),), gx_all, mask)

    return _layer("gru", 3, h, run, biases, return_sequences=return_sequences, w_init=w_init)


def lstm(
    hidden_size: int,
    *,
    return_sequences: bool = False,
    forget_bias: float = 1.0,
    w_init: initializers.InitializerLike = "lecun_normal",
) -> Module:
    """A long short-term memory layer over ``x: [N, T, F]``, from ``h = c = 0`` (equations in the
    module docstring).

    Returns the last ``h: [N, H]``, or every step's ``[N, T, H]`` with ``return_sequences``;
    ``mask`` as for :func:`gru`. The forget gate's bias starts at ``forget_bias`` (1, as
    Jozefowicz et al. 2015 recommend; PyTorch starts at 0), the others at 0.
    """
    _check_hidden_size("lstm", hidden_size)
    h = hidden_size

    def biases(dtype):
        return {"b": jnp.zeros((4 * h,), dtype).at[h : 2 * h].set(forget_bias)}

    def run(params, xs, mask):
        gx_all = xs + params["b"]

        def cell(carry, gx):
            state, memory = carry
            g = gx + matmul(state, params["wh"])
            i, f = jax.nn.sigmoid(g[:, :h]), jax.nn.sigmoid(g[:, h : 2 * h])
            candidate, o = jnp.tanh(g[:, 2 * h : 3 * h]), jax.nn.sigmoid(g[:, 3 * h :])
            memory = f * memory + i * candidate
            return (o * jnp.tanh(memory), memory)

        zeros = jnp.zeros((xs.shape[0], h), xs.dtype)
        return _scan_over_time(cell, (zeros, zeros), gx_all, mask)

    return _layer("lstm", 4, h, run, biases, return_sequences=return_sequences, w_init=w_init)
