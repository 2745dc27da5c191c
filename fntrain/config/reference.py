"""``docs/CONFIG.md``: every key with its type, default and meaning, generated from the schema."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fntrain.config.base import CUSTOM_TAG, FrozenMapping, Variants, field_kind, variants_of
from fntrain.config.data import _DataCommon
from fntrain.config.optim import _Optimizer
from fntrain.config.schema import Config

HEADER = """# Config reference

Generated from the schema in `fntrain/config/` by `python scripts/config_reference.py --write`;
a test fails when they disagree. Unknown keys are errors, and so is a key that belongs to
another variant (`loss.label_smoothing` with `loss.name: mse`): to switch a variant from the
command line, replace its whole section, e.g. `optimizer.schedule={name: cosine}`. `1e-3` is
read as a number; no float key takes `.inf` or `.nan`, and counts (steps, widths, batch sizes)
stay below 2^31.

Relative paths in `data` (`path` and every `*_path` key) are relative to the config file's
folder, and a `module.path:function` name is imported from that folder (`module_dir`); for a
value given as a `dotted.key=value` override, both are relative to the working directory. The
resolved config, and the `config.yaml` a run saves, holds them as absolute paths.

A config file is at most 1 MiB of UTF-8 YAML; a key may appear once in a mapping, nesting goes
64 levels deep at most, and aliases may expand the document to 100,000 nodes at most.
"""

# Keys that every variant of a section shares, shown once in a table of their own.
_SHARED = {
    "data": (_DataCommon, "every source but `charlm`, which takes the batching keys and its own `val_fraction`"),
    "optimizer": (_Optimizer, "every optimizer"),
}
_HEAD = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]


def _type_name(annotation, metadata=()) -> str:
    if variants_of(metadata) is not None:
        return "section"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0], annotation.__metadata__)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}s" if field_kind(args[0])[0] == "model" else f"list of {_type_name(args[0])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return f"`{{name: {value.name}}}`" if "name" in type(value).model_fields else "see below"
    if isinstance(value, FrozenMapping):
        return "`{}`"
    if value is None:
        return "`null`"
    return f"`{list(value) if isinstance(value, tuple) else value}`"


def _rows(prefix: str, fields: dict[str, FieldInfo]) -> list[str]:
    rows = []
    for name, field in sorted(fields.items(), key=lambda kv: kv[0] != "name"):
        kind = "mapping" if name in ("kwargs", "grid") else _type_name(field.annotation, field.metadata)
        rows.append(f"| `{prefix}{name}` | {kind} | {_default(field)} | {field.description or ''} |")
    return rows


def _table(rows: list[str]) -> str:
    return "\n".join(_HEAD + rows) + "\n" if rows else "No other keys.\n"


def _nested(prefix: str, fields: dict[str, FieldInfo], level: int) -> list[str]:
    """The tables of the sections inside ``fields`` (a schedule, groups and reduce_on_plateau inside the optimizer)."""
    out = []
    for name, field in fields.items():
        variants = variants_of(field.metadata)
        kind = field_kind(field.annotation, field.metadata)
        if variants is not None:
            out += _union(f"{prefix}{name}", variants, field.description, level)
        elif kind[0] == "model":
            out += _section(f"{prefix}{name}", kind[1], field, level)
        elif kind[0] == "list" and kind[1][0] == "model":
            out += _section(f"{prefix}{name}[]", kind[1][1], field, level)
    return out


def _own_fields(cls: type[BaseModel], shared: type[BaseModel] | None) -> dict[str, FieldInfo]:
    """A variant's fields but ``name`` and those it shares (unchanged) with ``shared``."""
    common = shared.model_fields if shared is not None else {}
    return {
        n: f
        for n, f in cls.model_fields.items()
        if n != "name" and not (n in common and common[n].description == f.description)
    }


def _union(key: str, variants: Variants, description: str, level: int) -> list[str]:
    hashes = "#" * level
    out = [f"{hashes} `{key}`\n", f"{description} One table per `{key}.name`.\n"]
    shared, what = _SHARED.get(key, (None, None))
    if shared is not None:
        fields = {n: f for n, f in shared.model_fields.items() if n != "name"}
        out += [f"{hashes}# `{key}`: {what}\n", _table(_rows(f"{key}.", fields))]
    for tag, cls in variants.by_tag.items():
        names = variants.names_of(cls) if tag != CUSTOM_TAG else ["<module.path:function or registered name>"]
        heading = " or ".join(f"`{key}.name: {n}`" for n in names)
        doc = cls.model_fields["name"].description if tag != CUSTOM_TAG else (cls.__doc__ or "").strip().replace("``", "`")
        own = _own_fields(cls, shared)
        out += [f"{hashes}# {heading}\n", f"{doc}\n", _table(_rows(f"{key}.", own))]
        out += _nested(f"{key}.", own, level + 2)
    if shared is not None:
        out += _nested(f"{key}.", shared.model_fields, level + 1)
    return out


def _section(key: str, cls: type[BaseModel], field: FieldInfo, level: int) -> list[str]:
    hashes = "#" * level
    doc = field.description or ""
    if field.default is None:
        doc = f"Optional (default null). {doc}"
    return [f"{hashes} `{key}`\n", f"{doc}\n", _table(_rows(f"{key}.", cls.model_fields))]


def reference_markdown() -> str:
    """Every config key with its type, default and meaning, as Markdown."""
    top, sections = {}, []
    for name, field in Config.model_fields.items():
        kind = field_kind(field.annotation, field.metadata)
        if kind[0] == "union":
            sections += _union(name, kind[1], field.description or "", 2)
        elif kind[0] == "model":
            sections += _section(name, kind[1], field, 2)
        elif kind[0] == "list" and kind[1][0] == "model":
            top[name] = field
            sections += _section(f"{name}[]", kind[1][1], field, 2)
        else:
            top[name] = field
    return "\n".join([HEADER, "## Top level\n", _table(_rows("", top)), *sections])
