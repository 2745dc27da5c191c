"""Layers: each constructor returns a :class:`~fntrain.nn.core.Module`.

Parameters take the dtype of a floating-point input (so float64 inputs give
float64 parameters, as gradient checks want) and float32 otherwise.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from fntrain.hyperparams import is_concrete, known_zero
from fntrain.nn import conv_choice, initializers
from fntrain.nn.core import Module, stateless
from fntrain.nn.matmul import matmul

IntOrPair = Union[int, Sequence[int]]


def _param_dtype(x):
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


def _pair(v: IntOrPair, what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or any(not isinstance(n, int) or n < 1 for n in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return pair


def _check_padding(padding: str) -> str:
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding


def _require_rank(layer: str, x, rank: int, layout: str):
    if len(x.shape) != rank:
        raise ValueError(
            f"{layer} expects inputs of rank {rank} ({layout}), got shape {tuple(x.shape)}; "
            "for images add a channel axis, e.g. x[..., None]."
        )


# --------------------------------------------------------------------------- dense / conv


def dense(
    features: int,
    *,
    use_bias: bool = True,
    w_init: initializers.InitializerLike = "lecun_normal",
    b_init: initializers.InitializerLike = "zeros",
) -> Module:
    """Affine map on the last axis: ``y = x @ w + b``.

    Shapes: ``x: [..., in]`` -> ``y: [..., features]``; ``w: [in, features]``, ``b: [features]``.

    ``w`` defaults to LeCun normal (variance ``1 / in``) and ``b`` to zeros, drawn from two
    keys split from ``init``'s. The ready-made :func:`~fntrain.nn.mlp` and
    :func:`~fntrain.nn.cnn` (and the YAML ``mlp``/``cnn`` models) choose differently: He normal
    after ReLU-family activations, Glorot uniform otherwise and for the output layer; pass
    ``w_init`` to either to get the same network both ways.
    """
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def init(key, x):
        dtype = _param_dtype(x)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (x.shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return params, {}

    def apply(params, state, x, *, train=False, key=None):
        y = matmul(x, params["w"])
        if use_bias:
            y = y + params["b"]
        return y, state

    return Module(init, apply, "dense")


def conv2d(
    features: int,
    kernel_size: IntOrPair = 3,
    *,
    strides: IntOrPair = 1,
    padding: str = "SAME",
    use_bias: bool = True,
    w_init: initializers.InitializerLike = "he_normal",
    b_init: initializers.InitializerLike = "zeros",
) -> Module:
    """2-D convolution (cross-correlation) over NHWC images.

    Shapes: ``x: [N, H, W, C]`` -> ``y: [N, H', W', features]``; ``w: [kh, kw, C, features]``.
    With ``"SAME"`` padding ``H' = ceil(H / stride)``; with ``"VALID"``
    ``H' = ceil((H - kh + 1) / stride)``. The kernel is :func:`conv2d_nhwc`'s, chosen by platform.

    ``w`` defaults to He normal (variance ``2 / (kh * kw * C)``) and ``b`` to zeros, drawn from
    two keys split from ``init``'s. :func:`~fntrain.nn.cnn` uses He normal too after
    ReLU-family activations but Glorot uniform after saturating ones; see its ``w_init``.
    """
    kernel, stride = _pair(kernel_size, "kernel_size"), _pair(strides, "strides")
    padding = _check_padding(padding)
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def init(key, x):
        _require_rank("conv2d", x, 4, "[N, H, W, C]")
        dtype = _param_dtype(x)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (*kernel, x.shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return params, {}

    def apply(params, state, x, *, train=False, key=None):
        y = conv2d_nhwc(x, params["w"], stride, padding)
        if use_bias:
            y = y + params["b"]
        return y, state

    return Module(init, apply, "conv2d")


def conv1d(
    features: int,
    kernel_size: int = 3,
    *,
    strides: int = 1,
    padding: str = "SAME",
    use_bias: bool = True,
    w_init: initializers.InitializerLike = "he_normal",
    b_init: initializers.InitializerLike = "zeros",
) -> Module:
    """1-D convolution (cross-correlation) over sequences ``[N, L, C]`` (channels last).

    Shapes: ``x: [N, L, C]`` -> ``y: [N, L', features]``; ``w: [k, C, features]``, ``b: [features]``;
    ``L'`` as ``H'`` for :func:`conv2d`. It is :func:`conv2d_nhwc` on ``[N, L, 1, C]`` with a
    ``(k, 1)`` kernel, so it takes the same per-platform kernel (im2col on XLA:CPU, XLA's
    convolution elsewhere).

    ``w`` defaults to He normal (variance ``2 / (k * C)``) and ``b`` to zeros, from two keys.
    """
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"conv1d kernel_size must be a positive int, got {kernel_size!r}")
    if not isinstance(strides, int) or strides < 1:
        raise ValueError(f"conv1d strides must be a positive int, got {strides!r}")
    padding = _check_padding(padding)
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def check(x):
        if len(x.shape) != 3:
            raise ValueError(
                f"conv1d expects sequences [N, L, C], got shape {tuple(x.shape)}; for one channel use x[..., None]."
            )

    def init(key, x):
        check(x)
        dtype = _param_dtype(x)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (kernel_size, x.shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return params, {}

    def apply(params, state, x, *, train=False, key=None):
        check(x)
        y = conv2d_nhwc(x[:, :, None, :], params["w"][:, None], (strides, 1), padding)[:, :, 0, :]
        if use_bias:
            y = y + params["b"]
        return y, state

    return Module(init, apply, "conv1d")


def conv2d_nhwc(x, w, strides: tuple[int, int], padding: str):
    """Cross-correlation over NHWC/HWIO: XLA's convolution, or on XLA:CPU one matmul of image patches.

    Equals ``lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC",
    "HWIO", "NHWC"))``. The kernel depends on the platform the computation is lowered for
    (``jax.lax.platform_dependent``): on GPU and TPU it is that convolution (cuDNN's on NVIDIA
    GPUs); on XLA:CPU it is whichever of that convolution and im2col with one matmul
    (``fntrain/nn/_cpu.py``: several times faster on some machines, but ``kh * kw`` times the
    memory of ``x``) was timed faster for this shape on this machine (``fntrain/nn/conv_choice.py``;
    ``FNTRAIN_CONV=im2col`` or ``xla`` forces one). All support every autodiff mode
    (``jax.grad``, ``jax.jvp``, ``jax.hessian``) and ``jax.vmap``.

    Shapes: ``x: [N, H, W, C]``, ``w: [kh, kw, C, F]`` -> ``[N, H', W', F]``, dtype of ``x``.
    """
    c = w.shape[2]
    if x.shape[-1] != c:
        raise ValueError(f"conv2d kernel expects {c} input channels, got input of shape {tuple(x.shape)}")
    return lax.platform_dependent(
        x,
        w,
        cpu=functools.partial(conv_choice.cpu_kernel(x, w, strides, padding), strides=strides, padding=padding),
        default=functools.partial(conv_choice.xla_conv2d, strides=strides, padding=padding),
    )


def depthwise_conv2d(
    kernel_size: IntOrPair = 3,
    *,
    strides: IntOrPair = 1,
    padding: str = "SAME",
    channel_multiplier: int = 1,
    use_bias: bool = True,
    w_init: initializers.InitializerLike = "he_normal",
    b_init: initializers.InitializerLike = "zeros",
) -> Module:
    """Depthwise 2-D convolution over NHWC images: each input channel has its own filters.

    Output channel ``c * channel_multiplier + m`` is input channel ``c``
    cross-correlated with ``w[:, :, 0, c * channel_multiplier + m]``; channels never mix.
    This is ``lax.conv_general_dilated`` with ``feature_group_count=C``, so the kernel is
    stored in that layout (as in TensorFlow and Flax), which also gives the initializer
    the right fan-in (``kh * kw``).

    Shapes: ``x: [N, H, W, C]`` -> ``y: [N, H', W', C * channel_multiplier]``;
    ``w: [kh, kw, 1, C * channel_multiplier]``, ``b: [C * channel_multiplier]``.
    ``H'`` is as for :func:`conv2d`.
    """
    kernel, stride = _pair(kernel_size, "kernel_size"), _pair(strides, "strides")
    padding = _check_padding(padding)
    if not isinstance(channel_multiplier, int) or channel_multiplier < 1:
        raise ValueError(f"depthwise_conv2d channel_multiplier must be a positive int, got {channel_multiplier!r}")
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def init(key, x):
        _require_rank("depthwise_conv2d", x, 4, "[N, H, W, C]")
        dtype, features = _param_dtype(x), x.shape[-1] * channel_multiplier
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (*kernel, 1, features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return params, {}

    def apply(params, state, x, *, train=False, key=None):
        y = lax.conv_general_dilated(
            x,
            params["w"],
            window_strides=stride,
            padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
        if use_bias:
            y = y + params["b"]
        return y, state

    return Module(init, apply, "depthwise_conv2d")


# --------------------------------------------------------------------------- pooling / reshape


def _pool(name: str, window: IntOrPair, strides: IntOrPair | None, padding: str) -> Callable:
    """``dims(x) -> (window_dims, strides)`` for NHWC images or ``[N, L, C]`` sequences.

    An int applies to every spatial axis; a pair is ``(h, w)`` and needs images.
    """
    if isinstance(window, int):
        _pair(window, f"{name} window")
    else:
        window = _pair(window, f"{name} window")
    if strides is not None and not isinstance(strides, int):
        strides = _pair(strides, f"{name} strides")
    elif strides is not None:
        _pair(strides, f"{name} strides")
    _check_padding(padding)

    def spatial(v, rank: int, x) -> tuple:
        if isinstance(v, int):
            return (v,) * rank
        if rank != 2:
            raise ValueError(f"{name}: a {v} window is for images [N, H, W, C]; a sequence {tuple(x.shape)} takes an int")
        return tuple(v)

    def dims(x) -> tuple[tuple, tuple]:
        rank = len(x.shape) - 2
        if rank not in (1, 2):
            raise ValueError(f"{name} expects [N, L, C] sequences or [N, H, W, C] images, got shape {tuple(x.shape)}")
        w = spatial(window, rank, x)
        s = w if strides is None else spatial(strides, rank, x)
        return (1, *w, 1), (1, *s, 1)

    return dims


def max_pool(window: IntOrPair = 2, *, strides: IntOrPair | None = None, padding: str = "VALID") -> Module:
    """Max over ``window`` patches of NHWC images or ``[N, L, C]`` sequences; ``strides``
    defaults to ``window``. An int window applies to every spatial axis."""
    dims = _pool("max_pool", window, strides, padding)

    def fn(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, *dims(x), padding)

    return stateless(fn, "max_pool")


def avg_pool(window: IntOrPair = 2, *, strides: IntOrPair | None = None, padding: str = "VALID") -> Module:
    """Mean over ``window`` patches of NHWC images or ``[N, L, C]`` sequences; ``strides``
    defaults to ``window``.

    With ``"SAME"`` padding, border windows average only the real (unpadded) pixels.
    """
    dims = _pool("avg_pool", window, strides, padding)

    def fn(x):
        window_dims, steps = dims(x)
        total = lax.reduce_window(x, 0.0, lax.add, window_dims, steps, padding)
        if padding == "VALID":
            return total / math.prod(window_dims)
        count = lax.reduce_window(jnp.ones(x.shape[1:-1], x.dtype), 0.0, lax.add, window_dims[1:-1], steps[1:-1], padding)
        return total / count[None, ..., None]

    return stateless(fn, "avg_pool")


def global_avg_pool() -> Module:
    """Mean over the spatial axes: ``[N, H, W, C] -> [N, C]`` (and ``[N, L, C] -> [N, C]``)."""
    return stateless(lambda x: jnp.mean(x, axis=tuple(range(1, x.ndim - 1))), "global_avg_pool")


# Flattens all but the batch axis: [N, ...] -> [N, prod(...)].
flatten = stateless(lambda x: jnp.reshape(x, (x.shape[0], -1)), "flatten")


def reshape(*shape: int) -> Module:
    """Reshapes each example: ``[N, ...] -> [N, *shape]`` (one entry may be -1).

    Example:
      >>> reshape(28, 28, 1)   # [N, 784] -> [N, 28, 28, 1]
    """
    if not shape or any(not isinstance(d, int) or (d < 1 and d != -1) for d in shape) or list(shape).count(-1) > 1:
        raise ValueError(f"reshape takes positive ints and at most one -1, got {shape!r}")
    return stateless(lambda x: jnp.reshape(x, (x.shape[0], *shape)), "reshape")


def _as_sequence(x):
    if x.ndim < 2:
        raise ValueError(f"as_sequence expects [N, T, ...] inputs, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)  # integer values become one float feature each
    if x.ndim == 2:
        return x[..., None]
    return jnp.reshape(x, (*x.shape[:2], -1))


# Sequences for recurrent and 1-D conv layers: [N, T] -> [N, T, 1] (one feature per step),
# [N, T, ...] -> [N, T, prod(...)] (e.g. the rows of an image as time steps); integers become floats.
as_sequence = stateless(_as_sequence, "as_sequence")


# --------------------------------------------------------------------------- regularisation


def dropout(rate: float) -> Module:
    """Zeroes each element with probability ``rate`` in training and scales the rest by ``1 / (1 - rate)``.

    In evaluation (``train=False``) it is the identity. In training it needs
    ``key``; the same key gives the same mask.
    """
    if is_concrete(rate) and not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate is the probability of dropping and must be in [0, 1), got {rate}")

    def init(key, x):
        return {}, {}

    def apply(params, state, x, *, train=False, key=None):
        if not train or known_zero(rate):
            return x, state
        if key is None:
            raise ValueError(
                "dropout(train=True) needs a PRNG key: call net.apply(params, state, x, train=True, "
                "key=jax.random.key(...)), or pass train=False for evaluation."
            )
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), state

    return Module(init, apply, "dropout")


# --------------------------------------------------------------------------- normalisation


def _stats_dtype(x):
    """Normalisation statistics are computed in at least float32 (bfloat16 inputs are upcast)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def layer_norm(*, eps: float = 1e-5, use_scale: bool = True, use_offset: bool = True) -> Module:
    """Normalises the last axis to mean 0 and variance 1, then scales and offsets it.

    Shapes: ``x: [..., F]``; ``scale, offset: [F]``.
    """

    def init(key, x):
        dtype, f = _param_dtype(x), x.shape[-1]
        params = {}
        if use_scale:
            params["scale"] = jnp.ones((f,), dtype)
        if use_offset:
            params["offset"] = jnp.zeros((f,), dtype)
        return params, {}

    def apply(params, state, x, *, train=False, key=None):
        z = x.astype(_stats_dtype(x))
        mean = jnp.mean(z, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(z - mean), axis=-1, keepdims=True)
        y = (z - mean) * lax.rsqrt(var + eps)
        if use_scale:
            y = y * params["scale"]
        if use_offset:
            y = y + params["offset"]
        return y.astype(x.dtype), state

    return Module(init, apply, "layer_norm")


def batch_norm(*, momentum: float = 0.9, eps: float = 1e-5) -> Module:
    """Batch normalisation over all axes but the last (features).

    In training it normalises with the batch's mean and (biased) variance and
    updates the running statistics in ``state``::

        mean <- momentum * mean + (1 - momentum) * batch_mean
        var  <- momentum * var  + (1 - momentum) * batch_var

    In evaluation it normalises with the running statistics and leaves them.

    Shapes: ``x: [..., F]``; params ``scale, offset: [F]``; state ``mean, var: [F]``.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"batch_norm momentum must be in [0, 1), got {momentum}")

    def init(key, x):
        dtype, f = _param_dtype(x), x.shape[-1]
        params = {"scale": jnp.ones((f,), dtype), "offset": jnp.zeros((f,), dtype)}
        state = {"mean": jnp.zeros((f,), dtype), "var": jnp.ones((f,), dtype)}
        return params, state

    def apply(params, state, x, *, train=False, key=None):
        z = x.astype(_stats_dtype(x))
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(z, axis=axes)
            var = jnp.mean(jnp.square(z - mean), axis=axes)
            state = {
                "mean": momentum * state["mean"] + (1.0 - momentum) * lax.stop_gradient(mean),
                "var": momentum * state["var"] + (1.0 - momentum) * lax.stop_gradient(var),
            }
        else:
            mean, var = state["mean"], state["var"]
        y = (z - mean) * lax.rsqrt(var + eps) * params["scale"] + params["offset"]
        return y.astype(x.dtype), state

    return Module(init, apply, "batch_norm")


def rms_norm(*, eps: float = 1e-6) -> Module:
    """Root-mean-square normalisation of the last axis, then a learned scale (no offset, no centring).

    ``y = x / sqrt(mean(x ** 2, axis=-1) + eps) * scale``.

    Shapes: ``x: [..., F]``; ``scale: [F]``.
    """

    def init(key, x):
        return {"scale": jnp.ones((x.shape[-1],), _param_dtype(x))}, {}

    def apply(params, state, x, *, train=False, key=None):
        z = x.astype(_stats_dtype(x))
        y = z * lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + eps)
        return (y * params["scale"]).astype(x.dtype), state

    return Module(init, apply, "rms_norm")


def group_norm(num_groups: int, *, eps: float = 1e-5) -> Module:
    """Group normalisation: channels split into ``num_groups`` groups, each normalised per example.

    Channel ``c`` belongs to group ``c // (C // num_groups)``. Mean and (biased) variance are
    taken over all non-batch axes and the channels of the group, so the result does not
    depend on the batch (unlike :func:`batch_norm`). ``num_groups=1`` is layer norm over
    ``[H, W, C]``; ``num_groups=C`` is instance norm.

    Shapes: ``x: [N, ..., C]`` (NHWC images, or any rank >= 2 with channels last);
    ``scale, offset: [C]``.
    """
    if not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"group_norm num_groups must be a positive int, got {num_groups!r}")

    def check(x):
        if len(x.shape) < 2:
            raise ValueError(f"group_norm expects inputs [N, ..., C] of rank >= 2, got shape {tuple(x.shape)}")
        if x.shape[-1] % num_groups:
            raise ValueError(
                f"group_norm: {x.shape[-1]} channels do not split into {num_groups} equal groups; "
                f"choose num_groups dividing {x.shape[-1]}."
            )

    def init(key, x):
        check(x)
        dtype, c = _param_dtype(x), x.shape[-1]
        return {"scale": jnp.ones((c,), dtype), "offset": jnp.zeros((c,), dtype)}, {}

    def apply(params, state, x, *, train=False, key=None):
        check(x)
        grouped = x.astype(_stats_dtype(x)).reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
        axes = (*range(1, x.ndim - 1), x.ndim)  # every axis but the batch and the group
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        y = ((grouped - mean) * lax.rsqrt(var + eps)).reshape(x.shape)
        return (y * params["scale"] + params["offset"]).astype(x.dtype), state

    return Module(init, apply, "group_norm")


# --------------------------------------------------------------------------- embedding


def embedding(
    vocab_size: int, features: int, *, w_init: initializers.InitializerLike = initializers.normal(1.0)
) -> Module:
    """Looks up integer ids: ``x: [...] int`` -> ``[..., features]``; ``table: [vocab_size, features]``."""
    w_init = initializers.get(w_init)

    def init(key, x):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"embedding expects integer token ids, got dtype {x.dtype}")
        return {"table": w_init(key, (vocab_size, features), jnp.float32)}, {}

    def apply(params, state, x, *, train=False, key=None):
        return jnp.take(params["table"], x, axis=0), state

    return Module(init, apply, "embedding")


# --------------------------------------------------------------------------- activations

relu = stateless(jax.nn.relu, "relu")
gelu = stateless(jax.nn.gelu, "gelu")
tanh = stateless(jnp.tanh, "tanh")
sigmoid = stateless(jax.nn.sigmoid, "sigmoid")
softplus = stateless(jax.nn.softplus, "softplus")
identity = stateless(lambda x: x, "identity")

ACTIVATIONS = {m.name: m for m in (relu, gelu, tanh, sigmoid, softplus, identity)}


def activation(name: str) -> Module:
    """The activation layer called ``name`` (one of ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None
