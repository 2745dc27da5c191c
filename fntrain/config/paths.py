"""What a config's relative paths and module names are relative to.

Two kinds of value name places on disk:

* a ``data`` key named ``path`` or ending in ``_path`` (``data.path``, ``data.images_path``,
  ...), by its name, so that a source added later is covered too;
* the folder a ``module.path:function`` name is imported from: the ``module_dir`` beside
  the ``name`` of ``data``, ``model``, ``loss``, ``objective`` and each of ``callbacks``, and
  ``metrics_module_dir`` for the names in ``metrics``.

``load_config`` resolves values written in the config file against the file's folder and
values given as ``dotted.key=value`` overrides against the working directory, so the
resolved config (and the ``config.yaml`` a run saves) holds absolute paths and trains the
same from any directory. A ``module_dir`` the file leaves out is the file's folder (the
working directory for a name given as an override). Absolute values are kept as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

COMPONENTS = ("data", "model", "loss", "objective")  # sections whose `name` may be module.path:function
MODULE_DIR = "module_dir"
METRICS_MODULE_DIR = "metrics_module_dir"


def is_path_key(key: Any) -> bool:
    """Whether a ``data`` key names a file: ``path`` or ``*_path``."""
    return isinstance(key, str) and (key == "path" or key.endswith("_path"))


def names_module(name: Any) -> bool:
    """Whether ``name`` is a ``module.path:function`` (rather than a built-in or registered name)."""
    return isinstance(name, str) and ":" in name


def absolute(value: str, base: Path) -> str:
    """``value`` (``~`` expanded) joined to ``base`` unless already absolute; symlinks are kept."""
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def _section(section: dict, base: Path, *, data: bool) -> dict:
    out = dict(section)
    if data:
        for key, value in out.items():
            if is_path_key(key) and isinstance(value, str) and value:
                out[key] = absolute(value, base)
    folder = out.get(MODULE_DIR)
    if isinstance(folder, str) and folder:
        out[MODULE_DIR] = absolute(folder, base)
    elif folder is None and names_module(out.get("name")):
        out[MODULE_DIR] = os.path.abspath(base)
    return out


def resolve(raw: dict, base: Path) -> dict:
    """A copy of ``raw`` (a config, or the part of one an override sets) with paths made absolute.

    Args:
      raw: parsed YAML; values of the wrong type are left for validation to report.
      base: the absolute folder relative values are relative to.
    """
    out = dict(raw)
    for key in COMPONENTS:
        if isinstance(out.get(key), dict):
            out[key] = _section(out[key], base, data=key == "data")
    if isinstance(out.get("callbacks"), list):
        out["callbacks"] = [_section(c, base, data=False) if isinstance(c, dict) else c for c in out["callbacks"]]
    folder = out.get(METRICS_MODULE_DIR)
    if isinstance(folder, str) and folder:
        out[METRICS_MODULE_DIR] = absolute(folder, base)
    elif folder is None and isinstance(out.get("metrics"), list) and any(map(names_module, out["metrics"])):
        out[METRICS_MODULE_DIR] = os.path.abspath(base)
    return out


def resolve_override(raw: dict, path: tuple[str, ...], base: Path) -> None:
    """Resolves, in place and against ``base``, what the override of ``path`` just set in ``raw``.

    A new ``name`` (or a new ``metrics`` list) brings its own folder: the one the file gave
    for the old name is dropped first.
    """
    top = path[0]
    if len(path) == 2 and top in COMPONENTS and path[1] == "name" and isinstance(raw.get(top), dict):
        raw[top].pop(MODULE_DIR, None)
    if path == ("metrics",):
        raw.pop(METRICS_MODULE_DIR, None)
    keys = (top, METRICS_MODULE_DIR) if top == "metrics" else (top,)
    raw.update(resolve({key: raw[key] for key in keys if key in raw}, base))
