"""Pydantic's validation errors as one short sentence each, named by the dotted key.

``describe`` walks an error's location through the schema, dropping the variant tags
pydantic inserts (``optimizer.adam.b1`` is ``optimizer.b1`` to the user), so that it can
suggest the key the user probably meant and say which variant a misplaced key belongs to.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, NamedTuple, Optional

import yaml

from fntrain.config.base import CUSTOM_TAG, Variants, field_kind
from fntrain.limits import quote, shorten


class _Place(NamedTuple):
    """Where an error location points in the schema."""

    parts: list  # the location as the user writes it: keys and list indices
    holder: Optional[type]  # the section class whose field the last part is (or is not)
    variants: Optional[Variants]  # the union ``holder`` was chosen from, if any
    section: list  # ``parts`` of the holder section


def _walk(loc: tuple, root: type) -> _Place:
    kind: tuple = ("model", root, None)
    parts: list = []
    holder, variants, section = None, None, []
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue  # a validator's name, not a key
        if kind[0] == "union" and part in kind[1].by_tag:
            kind = ("model", kind[1].by_tag[part], kind[1])
            continue
        if kind[0] == "other" and isinstance(part, str):
            continue  # the member names pydantic gives inside a plain union (int or str)
        parts.append(part)
        if kind[0] == "model":
            _, holder, variants = kind
            section = parts[:-1]
            field = holder.model_fields.get(part)
            kind = field_kind(field.annotation, field.metadata) if field is not None else ("other",)
        elif kind[0] == "list" and isinstance(part, int):
            kind = kind[1]
        else:
            kind = ("other",)
    return _Place(parts, holder, variants, section)


def dotted(parts: list) -> str:
    """``["callbacks", 0, "name"]`` -> ``"callbacks[0].name"``."""
    out = ""
    for part in parts:
        part = part if isinstance(part, int) else shorten(str(part), 40)
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _node(raw: Any, parts: list) -> Any:
    for part in parts:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _flow(mapping: dict) -> str:
    try:
        return shorten(yaml.safe_dump(mapping, default_flow_style=True, sort_keys=False, width=10**6).strip(), 200)
    except (yaml.YAMLError, RecursionError):
        return "{name: " + shorten(str(mapping.get("name")), 80) + "}"


def _owners(variants: Variants, tags: list[str]) -> str:
    names = [f"a registered or `module.path:function` {variants.what}" if t == CUSTOM_TAG else t for t in tags]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{text} {'has' if len(names) == 1 else 'have'} it"


def _unknown_key(place: _Place, key: str, raw: Any) -> str:
    field, holder, variants = str(place.parts[-1]), place.holder, place.variants
    if variants is not None:
        owners = [tag for tag, cls in variants.by_tag.items() if cls is not holder and field in cls.model_fields]
        if owners:
            section = _node(raw, place.section)
            section = section if isinstance(section, dict) else {}
            name = section.get("name", variants.tag_of(holder))
            kept = {k: v for k, v in section.items() if k in holder.model_fields}
            example = _flow({"name": name, **kept})
            return (
                f"{key}: {variants.what} {name!r} takes no {field!r} ({_owners(variants, owners)}); remove it, or to "
                f"change the {variants.what}, replace the whole section, e.g. {dotted(place.section)}={example}"
            )
    allowed = list(holder.model_fields) if holder is not None else []
    if len(field) > 100:  # no suggestion for a key that long (difflib's cost grows with it)
        return f"{key}: unknown key"
    close = difflib.get_close_matches(field, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if not close and variants is not None:
        elsewhere = {f: tag for tag, cls in variants.by_tag.items() for f in cls.model_fields}
        close = difflib.get_close_matches(field, list(elsewhere), n=1)
        if close:
            hint = f"; did you mean {close[0]!r} (a key of {variants.what} {elsewhere[close[0]]})?"
    return f"{key}: unknown key{hint}"


def describe(error: dict, raw: Any, root: type) -> str:
    """One pydantic error as ``dotted.key: what is wrong``.

    Args:
      error: one of ``ValidationError.errors()``.
      raw: the mapping that was validated (for the names and keys the user wrote).
      root: the class it was validated as (``Config``).
    """
    place = _walk(error["loc"], root)
    key = dotted(place.parts)
    if error["type"] == "extra_forbidden":
        return _unknown_key(place, key, raw)
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    field, sep, rest = message.partition(": ")
    if sep and re.fullmatch(r"[a-z_][a-z0-9_]*", field):  # a cross-field check naming its field (or kwarg: b1)
        key, message = f"{key}.{field}" if key else field, rest
    message = shorten(message, 600)
    got = error.get("input")
    shown = "" if isinstance(got, dict) or got is None or quote(got) in message else f" (got {quote(got)})"
    return f"{key}: {message}{shown}" if key else f"{message}"
