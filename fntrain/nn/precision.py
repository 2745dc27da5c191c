"""Mixed precision: a network that computes in bfloat16 over float32 master parameters.

The policy lives in the network, not in the train step: :func:`mixed_precision`
casts parameters and inputs down on the way in and the outputs up on the way out.
The casts are part of the differentiated function, so gradients arrive in the
parameters' own dtype, the optimizer state built from float32 parameters stays
float32, and ``make_train_step``, checkpoints and the loop need no change.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fntrain.nn.core import Module


def cast_floating(tree: Any, dtype) -> Any:
    """Casts the floating-point leaves of ``tree`` to ``dtype``; integer and bool leaves stay."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def mixed_precision(net: Module, compute_dtype=jnp.bfloat16, *, output_dtype=jnp.float32) -> Module:
    """``net`` computing in ``compute_dtype`` while its parameters keep their dtype.

    ``apply`` casts the floating parameters and inputs to ``compute_dtype``, runs ``net``
    and casts floating outputs to ``output_dtype``, so the loss is computed in float32.
    ``init`` is ``net.init``: parameters are created (and kept, as the master copy) in
    the input's dtype, normally float32. Model state such as batch-norm running
    statistics is passed uncast; fntrain's normalisation layers compute their
    statistics in at least float32 whatever the input dtype, and attention its softmax.

    bfloat16 has float32's exponent range, so no loss scaling is needed. float16 is
    refused: without loss scaling its small gradients underflow.

    ``name`` and ``children`` are ``net``'s, so summaries and per-layer statistics
    (``fntrain.layer_grads``) see the layers; those diagnostics run them in float32.

    Args:
      net: any network.
      compute_dtype: the dtype of the matmuls and activations, e.g. ``jnp.bfloat16``.
      output_dtype: the dtype of the outputs handed to the loss.

    Example:
      >>> net = mixed_precision(mlp([512, 512], 10), jnp.bfloat16)
      >>> params, state = net.init(key, x)          # float32 parameters
      >>> logits, state = net.apply(params, state, x, train=True, key=key)  # bf16 inside, float32 out
    """
    compute_dtype = jnp.dtype(compute_dtype)
    if not jnp.issubdtype(compute_dtype, jnp.floating):
        raise ValueError(f"mixed_precision compute_dtype must be a floating dtype, got {compute_dtype}")
    if compute_dtype == jnp.float16:
        raise ValueError(
            "mixed_precision does not support float16: without loss scaling its gradients underflow; "
            "use bfloat16 (float32's exponent range) instead."
        )

    def apply(params, state, x, *, train=False, key=None):
        y, state = net.apply(cast_floating(params, compute_dtype), state, cast_floating(x, compute_dtype), train=train, key=key)
        return cast_floating(y, output_dtype), state

    return Module(net.init, apply, net.name, net.children)
