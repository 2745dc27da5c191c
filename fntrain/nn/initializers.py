"""Weight initializers, named as in the literature and selectable by string.

Each is a ``jax.nn.initializers`` function ``init(key, shape, dtype) -> array``.
Dense kernels are ``[in, out]`` and conv kernels ``[h, w, in, out]``, so fan-in
and fan-out are read the same way for both.
"""

from __future__ import annotations

from typing import Callable, Union

from jax.nn import initializers as _jinit

Initializer = Callable
InitializerLike = Union[str, Callable]

he_normal = _jinit.he_normal()
he_uniform = _jinit.he_uniform()
glorot_normal = _jinit.glorot_normal()
glorot_uniform = _jinit.glorot_uniform()
lecun_normal = _jinit.lecun_normal()
lecun_uniform = _jinit.lecun_uniform()
zeros = _jinit.zeros
ones = _jinit.ones


def normal(stddev: float = 0.01) -> Initializer:
    """Normal with mean 0 and the given standard deviation."""
    return _jinit.normal(stddev)


def uniform(scale: float = 0.01) -> Initializer:
    """Uniform on ``[-scale, scale)``."""
    init = _jinit.uniform(2 * scale)  # jax's uniform samples [0, scale)

    def shifted(key, shape, dtype=float):
        return init(key, shape, dtype) - scale

    return shifted


NAMED = {
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "normal": normal(),
    "uniform": uniform(),
    "zeros": zeros,
    "ones": ones,
}


def get(init: InitializerLike) -> Initializer:
    """Returns ``init`` itself, or the initializer named by the string ``init``."""
    if callable(init):
        return init
    try:
        return NAMED[init]
    except KeyError:
        raise ValueError(f"unknown initializer {init!r}; expected one of {sorted(NAMED)}") from None
