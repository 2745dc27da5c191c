"""YAML in, ``Config`` out (and back): reading the file, ``dotted.key=value`` overrides, dumping.

``reading`` reads the file and its YAML within bounds; ``paths`` makes the paths in it
absolute (against the file's folder, or the working directory for overrides).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from fntrain import limits
from fntrain.config import paths
from fntrain.config.base import FrozenMapping
from fntrain.config.messages import describe
from fntrain.config.reading import parse_yaml, read_config_text
from fntrain.config.schema import Config
from fntrain.errors import ConfigError
from fntrain.limits import quote

__all__ = ["apply_overrides", "config_to_dict", "dump_config", "load_config", "parse_override", "parse_yaml", "validate"]


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"optimizer.learning_rate=3e-4"`` -> ``(("optimizer", "learning_rate"), 0.0003)``."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {quote(text)} must look like dotted.key=value, e.g. optimizer.learning_rate=3e-4")
    return tuple(key.split(".")), parse_yaml(value, f"override {quote(text)}")


def apply_overrides(raw: dict, overrides: list[str], base_dir: Optional[Path] = None) -> dict:
    """Returns a copy of ``raw`` with each ``dotted.key=value`` set (sections created as needed).

    A value may be a whole section: ``optimizer.schedule={name: cosine, decay_steps: 500}``
    replaces the schedule, which is how to switch a variant whose old keys do not fit the new one.

    Args:
      raw: the parsed config.
      overrides: ``dotted.key=value`` strings; values are parsed as YAML.
      base_dir: what relative paths in the values are relative to (``fntrain.config.paths``);
        None: they are left as written.
    """
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {quote(text)}: {quote('.'.join(path[: i + 1]))[1:-1]} is not a section")
            node = child
        node[path[-1]] = value
        if base_dir is not None:
            paths.resolve_override(raw, path, base_dir)
    return raw


def validate(raw: Any, source: str) -> Config:
    """Validates a parsed YAML mapping into a ``Config``; all problems in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        problems = [describe(err, raw, Config) for err in errors[: limits.MAX_PROBLEMS]]
        raise ConfigError(f"{source}: {limits.listed(problems, len(errors))}") from None
    except ConfigError as e:  # raised outside a field validator (pydantic converts those)
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Reads, overrides and validates a YAML config file.

    Relative paths (``data.path``, ``data.*_path``) and the folders of ``module.path:function``
    names are resolved against the file's folder, or against the working directory for
    values given in ``overrides`` (``fntrain.config.paths``).

    Args:
      path: the YAML file.
      overrides: ``dotted.key=value`` strings; values are parsed as YAML.

    Raises:
      ConfigError: naming the file and every offending dotted key (the first
        ``limits.MAX_PROBLEMS`` of them, then how many more).

    Example:
      >>> config = load_config("configs/digits_mlp.yaml", ["optimizer.learning_rate=3e-4"])
    """
    path = Path(path)
    raw = parse_yaml(read_config_text(path), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    cwd = _working_directory()
    raw = paths.resolve(raw, cwd / path.parent)
    raw = apply_overrides(raw, list(overrides), cwd)
    if raw.get("output_dir") is None:
        raw["output_dir"] = str(Path("runs") / path.stem)
    return validate(raw, str(path))


def _working_directory() -> Path:
    try:
        return Path.cwd()
    except OSError as e:  # removed while we stood in it
        raise ConfigError(f"the working directory cannot be read ({e.strerror}); cd to an existing one") from None


# Written only when set: a config validated from Python (not loaded from a file) has none.
_ONLY_WHEN_SET = (paths.MODULE_DIR, paths.METRICS_MODULE_DIR, "population")  # population: so a one-run config.yaml is unchanged


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        fields = sorted(type(value).model_fields, key=lambda f: f != "name")  # name first: it picks the rest
        return {
            name: _plain(getattr(value, name))
            for name in fields
            if name not in _ONLY_WHEN_SET or getattr(value, name) is not None
        }
    if isinstance(value, FrozenMapping):
        return value.thaw()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Config) -> dict:
    """A plain, YAML-ready dict that ``validate`` turns back into an equal ``Config``."""
    out = _plain(config)
    if config.objective is not None:  # an objective replaces the loss: writing both would be refused
        del out["loss"]
    return out


def dump_config(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
