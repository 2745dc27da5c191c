"""Model summaries computed abstractly: shapes and parameter counts without allocating."""

from __future__ import annotations

import math

import jax

from fntrain.nn.core import Module, output_shape


def path_str(path) -> str:
    """A ``jax.tree_util`` key path as ``"dense_0/w"``: how parameters are named in files and logs."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (arrays or ``ShapeDtypeStruct``s)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def summary(net: Module, x) -> str:
    """A table of the top-level layers: name, output shape, parameter count.

    Initializers are not shown: each layer's docstring names its default (``dense`` LeCun
    normal, ``conv2d`` He normal), and :func:`~fntrain.nn.mlp` and :func:`~fntrain.nn.cnn`
    choose by activation unless given ``w_init``.

    Args:
      net: the network.
      x: an example input or a ``jax.ShapeDtypeStruct``; nothing is allocated.
    """
    params, state = jax.eval_shape(net.init, jax.random.key(0), x)
    rows = [("input", str(tuple(x.shape)), "")]
    if net.name == "serial":
        for name, layer in net.children:
            p, s = params.get(name, {}), state.get(name, {})
            x = output_shape(layer, p, s, x)
            rows.append((name, str(tuple(x.shape)), f"{count_params(p):,}" if p else ""))
    else:
        out = output_shape(net, params, state, x)
        rows.append((net.name, str(tuple(out.shape)), f"{count_params(params):,}"))
    rows.append(("total", "", f"{count_params(params):,}"))
    widths = [max(len(r[i]) for r in rows + [("layer", "output shape", "params")]) for i in range(3)]
    lines = [f"{'layer':<{widths[0]}}  {'output shape':<{widths[1]}}  {'params':>{widths[2]}}"]
    lines.append("-" * len(lines[0]))
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    return "\n".join(lines)
