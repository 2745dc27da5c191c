"""YAML in, ``Config`` out (and back): the safe loader, ``dotted.key=value`` overrides, dumping."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fntrain.config.base import FrozenMapping
from fntrain.config.messages import describe
from fntrain.config.schema import Config
from fntrain.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.1 requires a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parses YAML with the safe loader, reporting syntax errors as ConfigError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"optimizer.learning_rate=3e-4"`` -> ``(("optimizer", "learning_rate"), 0.0003)``."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like dotted.key=value, e.g. optimizer.learning_rate=3e-4")
    return tuple(key.split(".")), parse_yaml(value, f"override {text!r}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Returns a copy of ``raw`` with each ``dotted.key=value`` set (sections created as needed).

    A value may be a whole section: ``optimizer.schedule={name: cosine, decay_steps: 500}``
    replaces the schedule, which is how to switch a variant whose old keys do not fit the new one.
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
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def validate(raw: Any, source: str) -> Config:
    """Validates a parsed YAML mapping into a ``Config``; all problems in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(describe(err, raw, Config) for err in e.errors())
        raise ConfigError(f"{source}: {problems}") from None
    except ConfigError as e:  # raised outside a field validator (pydantic converts those)
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Reads, overrides and validates a YAML config file.

    Args:
      path: the YAML file.
      overrides: ``dotted.key=value`` strings; values are parsed as YAML.

    Raises:
      ConfigError: naming the file and every offending dotted key.

    Example:
      >>> config = load_config("configs/digits_mlp.yaml", ["optimizer.learning_rate=3e-4"])
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, list(overrides))
    if raw.get("output_dir") is None:
        raw["output_dir"] = str(Path("runs") / path.stem)
    return validate(raw, str(path))


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        fields = sorted(type(value).model_fields, key=lambda f: f != "name")  # name first: it picks the rest
        return {name: _plain(getattr(value, name)) for name in fields}
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
