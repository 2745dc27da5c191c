"""Model summaries computed abstractly: shapes and parameter counts without allocating."""

from __future__ import annotations

import math
from typing import Callable, Optional

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


def _group_text(params, prefix: str, group_of: Callable[[str], str]) -> str:
    """The groups of a layer's parameters: one name, or ``name: w, b; other: scale`` when they differ."""
    named = {path_str(p): group_of(prefix + path_str(p)) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    distinct = list(dict.fromkeys(named.values()))
    if len(distinct) <= 1:
        return distinct[0] if distinct else ""
    return "; ".join(f"{g or 'default'}: {', '.join(p for p, pg in named.items() if pg == g)}" for g in distinct)


def summary(net: Module, x, *, group_of: Optional[Callable[[str], str]] = None) -> str:
    """A table of the top-level layers: name, output shape, parameter count (and group).

    Initializers are not shown: each layer's docstring names its default (``dense`` LeCun
    normal, ``conv2d`` He normal), and :func:`~fntrain.nn.mlp` and :func:`~fntrain.nn.cnn`
    choose by activation unless given ``w_init``.

    Args:
      net: the network.
      x: an example input or a ``jax.ShapeDtypeStruct``; nothing is allocated.
      group_of: ``group_of(path) -> str``, a note per parameter path (``dense_1/w``), shown in a
        ``group`` column: the training loop passes each parameter's optimizer group.
    """
    params, state = jax.eval_shape(net.init, jax.random.key(0), x)
    rows = [("input", str(tuple(x.shape)), "", "")]
    if net.name == "serial":
        for name, layer in net.children:
            p, s = params.get(name, {}), state.get(name, {})
            x = output_shape(layer, p, s, x)
            group = _group_text(p, f"{name}/", group_of) if group_of and p else ""
            rows.append((name, str(tuple(x.shape)), f"{count_params(p):,}" if p else "", group))
    else:
        out = output_shape(net, params, state, x)
        group = _group_text(params, "", group_of) if group_of else ""
        rows.append((net.name, str(tuple(out.shape)), f"{count_params(params):,}", group))
    rows.append(("total", "", f"{count_params(params):,}", ""))
    head = ("layer", "output shape", "params", "group")
    columns = 4 if group_of else 3
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(columns)]

    def line(row):
        cells = [f"{row[0]:<{widths[0]}}", f"{row[1]:<{widths[1]}}", f"{row[2]:>{widths[2]}}"]
        return "  ".join(cells + ([f"{row[3]:<{widths[3]}}"] if group_of else [])).rstrip()

    lines = [line(head)]
    lines.append("-" * len(lines[0]))
    lines += [line(r) for r in rows]
    return "\n".join(lines)
