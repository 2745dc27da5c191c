"""What every config section is built from: frozen sections, frozen mappings, variants.

A section is a frozen pydantic model that forbids unknown keys. A section with variants
(``data``, ``model``, ``loss``, ``optimizer``, ``optimizer.schedule``) is a union of
classes chosen by the section's ``name``, built by ``_union``; each class holds only its
own keys, so a key of another variant is an error rather than silently ignored.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Callable, ClassVar, Optional, Union

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Strict, Tag, ValidationInfo, field_validator,
)

from fntrain import registry
from fntrain.limits import MAX_COUNT, quote

# Strict: `true` is not the integer 1 here, and `"3"` is not a number. Counts (steps, widths,
# batch sizes) stay below 2**31, as jax's int32 step counter does.
PositiveInt = Annotated[int, Strict(), Field(gt=0, le=MAX_COUNT)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0, le=MAX_COUNT)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0)]
Fraction = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]


class _Section(BaseModel):
    # allow_inf_nan=False: no float field takes inf or nan (a user function's kwargs may).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- frozen mappings


class FrozenList(tuple):
    """A list frozen into a tuple (hashable) that still equals the list it froze."""

    __slots__ = ()

    def __eq__(self, other):
        if isinstance(other, list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return tuple.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    __hash__ = tuple.__hash__


class FrozenMapping(Mapping):
    """An immutable, hashable mapping of string keys, as configs hold ``kwargs``.

    Values are frozen too (mappings to ``FrozenMapping``, lists to ``FrozenList``), so that
    a config holding one stays hashable. It equals the mapping it froze, ``**m`` and
    ``dict(m)`` work, and ``thaw()`` gives back plain dicts and lists all the way down.

    Example:
      >>> m = FrozenMapping({"sizes": [8, 8], "act": "relu"})
      >>> m == {"sizes": [8, 8], "act": "relu"}, hash(m) == hash(FrozenMapping(dict(m)))
      (True, True)
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, mapping: Mapping | Any = ()):
        pairs = dict(mapping).items()
        self._data = {str(k): freeze(v) for k, v in sorted(pairs, key=lambda kv: str(kv[0]))}
        self._hash = None

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(tuple(self._data.items()))
        return self._hash

    def __repr__(self):
        return f"FrozenMapping({self._data!r})"

    def __reduce__(self):
        return FrozenMapping, (self.thaw(),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def thaw(self) -> dict:
        """What the user wrote, as plain dicts and lists."""
        return {k: thaw(v) for k, v in self._data.items()}


def freeze(value):
    """Mappings to ``FrozenMapping`` and lists to ``FrozenList``, recursively."""
    if isinstance(value, FrozenMapping):
        return value
    if isinstance(value, Mapping):
        return FrozenMapping(value)
    if isinstance(value, (list, tuple)):
        return FrozenList(freeze(v) for v in value)
    if isinstance(value, set):
        return frozenset(value)
    return value


def thaw(value):
    """The inverse of ``freeze``: plain dicts and lists."""
    if isinstance(value, FrozenMapping):
        return value.thaw()
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def _freeze_mapping(value) -> FrozenMapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of argument names to values, got {type(value).__name__}")
    return freeze(value)


# --------------------------------------------------------------------------- user components

MODULE_DIR_DOC = (
    "The folder a `module.path:function` name's module is imported from (appended to `sys.path`, so the "
    "standard library and installed packages keep their names); `fntrain train` fills it in: the config "
    "file's folder, or the working directory for a name given as an override. null: installed modules only."
)


class _Custom(_Section):
    """A component named ``module.path:function`` or registered by name (``fntrain.register_*``)."""

    kind: ClassVar[str]  # the registry kind: "model", "loss", "dataset", ...
    builtins: ClassVar[tuple[str, ...]] = ()  # built-in names, offered as suggestions for typos

    # Declared before `name`, whose validator reads it (pydantic validates fields in order).
    module_dir: Optional[str] = Field(None, description=MODULE_DIR_DOC)
    name: str = Field(description="`module.path:function`, or a name registered with `fntrain.register_*`.")
    kwargs: Any = Field(default=FrozenMapping(), description="Keyword arguments for the function (a mapping).")

    @field_validator("kwargs", mode="before")
    @classmethod
    def _freeze_kwargs(cls, v):
        return _freeze_mapping(v)

    @field_validator("name")
    @classmethod
    def _known_name(cls, v, info: ValidationInfo):
        if v not in cls.builtins:
            registry.lookup(v, cls.kind, dict.fromkeys(cls.builtins), module_dir=info.data.get("module_dir"))
        return v

    @property
    def kwargs_dict(self) -> dict[str, Any]:
        """``kwargs`` as plain dicts and lists (a fresh copy each time)."""
        return self.kwargs.thaw()

    def function(self) -> Callable:
        """The named function (imported or looked up in the registry)."""
        return registry.lookup(self.name, self.kind, module_dir=self.module_dir)


# --------------------------------------------------------------------------- variants


CUSTOM_TAG = "custom"


class Variants:
    """The classes of a section chosen by ``name``; kept in the union's metadata.

    Args:
      what: the section's noun in messages ("loss", "optimizer", "schedule", ...).
      classes: ``{name: class}``; aliases map to the same class (``mse``).
      custom: the class for every other name (``module.path:function`` or registered), or
        None when only the built-in names are allowed.
      default: the name a section without ``name`` gets; None: ``name`` is required.
      prefixed: ``{prefix: class}``: the class for every name that starts with ``prefix``
        (``{"optax:": OptaxOptimizer}``); its tag is ``optax:NAME``. The class
        may have a ``suggest(name) -> str | None`` classmethod offering a name for a typo.
    """

    def __init__(
        self,
        what: str,
        classes: dict[str, type],
        custom: Optional[type],
        default: Optional[str],
        prefixed: Optional[dict[str, type]] = None,
    ):
        self.what, self.classes, self.custom, self.default = what, dict(classes), custom, default
        self.prefixed = dict(prefixed or {})
        self.by_tag: dict[str, type] = {}
        for name, cls in classes.items():
            self.by_tag.setdefault(self.tag_of(cls), cls)
        for cls in self.prefixed.values():
            self.by_tag[self.tag_of(cls)] = cls
        if custom is not None:
            self.by_tag[CUSTOM_TAG] = custom

    def tag_of(self, cls: type) -> str:
        """A class's tag: its first name (pydantic puts it in error locations)."""
        if cls is self.custom:
            return CUSTOM_TAG
        prefix = next((p for p, c in self.prefixed.items() if c is cls), None)
        if prefix is not None:
            return f"{prefix}NAME"
        return next(name for name, c in self.classes.items() if c is cls)

    def names_of(self, cls: type) -> list[str]:
        prefixes = [f"{p}NAME" for p, c in self.prefixed.items() if c is cls]
        return prefixes or [name for name, c in self.classes.items() if c is cls]

    def tag(self, name: Any) -> Optional[str]:
        if name in self.classes:
            return self.tag_of(self.classes[name])
        for prefix, cls in self.prefixed.items():
            if isinstance(name, str) and name.startswith(prefix):
                return self.tag_of(cls)
        return CUSTOM_TAG if self.custom is not None and isinstance(name, str) else None

    def choices(self) -> str:
        """``one of a, b, c`` (``or module.path:function`` with a custom variant)."""
        text = "one of " + ", ".join([*self.classes, *(f"{p}NAME" for p in self.prefixed)])
        return text + ", a registered name or `module.path:function`" if self.custom is not None else text

    def suggestion(self, name: str) -> Optional[str]:
        """A name close to ``name``: a built-in one, or one a prefixed class offers."""
        close = difflib.get_close_matches(name, list(self.classes), n=1)
        if close:
            return close[0]
        for cls in self.prefixed.values():
            offered = getattr(cls, "suggest", lambda n: None)(name)
            if offered is not None:
                return offered
        return None

    def check(self, v):
        """Before validation: a mapping whose ``name`` picks a variant (the default if absent)."""
        if isinstance(v, BaseModel):
            return v
        if not isinstance(v, Mapping):
            raise ValueError(f"expected a mapping whose `name` is {self.choices()}")
        v = dict(v)
        if "name" not in v:
            if self.default is None:
                raise ValueError(f"name: required; {self.choices()}")
            v["name"] = self.default
        name = v["name"]
        if not isinstance(name, str):
            raise ValueError(f"name: expected a string, {self.choices()} (got {quote(name)})")
        if self.tag(name) is None:
            close = self.suggestion(name) if len(name) <= 100 else None
            hint = f"; did you mean {close!r}?" if close else ""
            raise ValueError(f"name: unknown {self.what} {quote(name)}{hint} ({self.choices()})")
        return v

    def pick(self, v) -> Optional[str]:
        name = v.get("name") if isinstance(v, Mapping) else getattr(v, "name", None)
        return self.tag(name)


def _union(
    what: str,
    classes: dict[str, type],
    *,
    custom: Optional[type] = None,
    default: Optional[str] = None,
    prefixed: Optional[dict[str, type]] = None,
):
    """A section type: the class whose names include the section's ``name``.

    Names with a prefix of ``prefixed`` go to its class; other unknown names go to ``custom``
    if given and are an error otherwise; a missing name means ``default`` (or is an error).
    The ``Variants`` in the metadata lets messages and the reference see the classes.
    """
    variants = Variants(what, classes, custom, default, prefixed)
    members = tuple(Annotated[cls, Tag(tag)] for tag, cls in variants.by_tag.items())
    return Annotated[Union[members], Discriminator(variants.pick), BeforeValidator(variants.check), variants]


def variants_of(metadata) -> Optional[Variants]:
    """The ``Variants`` among a field's (or an ``Annotated``'s) metadata, if any."""
    return next((m for m in metadata if isinstance(m, Variants)), None)


def field_kind(annotation, metadata=()) -> tuple:
    """What a field holds: ``("union", Variants)``, ``("model", cls, None)``, ``("list", kind)``, ``("other",)``."""
    variants = variants_of(metadata)
    if variants is not None:
        return ("union", variants)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return field_kind(args[0], annotation.__metadata__)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return field_kind(inner[0]) if len(inner) == 1 else ("other",)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return ("list", field_kind(args[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation, None)
    return ("other",)
