"""A config file's text and its YAML, read within bounds.

The file must be a regular file of at most ``limits.MAX_CONFIG_BYTES`` (a device such as
``/dev/zero`` or a FIFO is refused without being read). The YAML is read with a
``yaml.SafeLoader`` (plain data only, nothing is unpickled or constructed from tags) that
also refuses a key given twice in one mapping, nesting deeper than ``limits.MAX_YAML_DEPTH``
and documents whose aliases expand past ``limits.MAX_YAML_NODES`` nodes or
``limits.MAX_YAML_SCALAR_CHARS`` characters (an "alias bomb"), and reads ``1e-3`` as a float.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from fntrain import limits
from fntrain.errors import ConfigError
from fntrain.limits import quote


def read_config_text(path: Path) -> str:
    """The text of the config file at ``path``, or a ConfigError saying why it cannot be read."""
    name = repr(str(path))  # in full: the OS bounds a path's length
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {name} does not exist") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read config file {name}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"config file {name} is a directory; give the YAML file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"config file {name} is not a regular file (a device, FIFO or socket); give a YAML file")
    too_big = (
        f"config file {name} is larger than {limits.MAX_CONFIG_BYTES // 1024} KiB, more than any config needs; "
        f"give a smaller file"
    )
    if info.st_size > limits.MAX_CONFIG_BYTES:
        raise ConfigError(f"{too_big} (it has {info.st_size} bytes)")
    try:
        with open(path, "rb") as f:
            data = f.read(limits.MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config file {name}: {e.strerror or e}") from None
    if len(data) > limits.MAX_CONFIG_BYTES:  # it grew since stat
        raise ConfigError(too_big)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {name} is not UTF-8 text: byte {e.start} is {data[e.start:e.start + 1]!r}") from None


# --------------------------------------------------------------------------- the loader


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a config may not be: too big, too deep, a key twice."""


class _Size(NamedTuple):
    nodes: int
    chars: int
    depth: int


def _measure(node: Node, level: int, memo: dict, active: set) -> _Size:
    """A node's size with every alias expanded, refused past the limits (memoized: linear time)."""
    key = id(node)
    size = memo.get(key)
    if size is None:
        if key in active:
            raise _Refused(None, None, "an alias refers to a node that contains it (a recursive structure)", node.start_mark)
        if level > limits.MAX_YAML_DEPTH:
            raise _Refused(None, None, f"nested deeper than {limits.MAX_YAML_DEPTH} levels (through aliases)", node.start_mark)
        active.add(key)
        nodes, chars, depth = 1, 0, 0
        if isinstance(node, ScalarNode):
            chars = len(node.value)
        children = node.value if isinstance(node, SequenceNode) else []
        if isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        for child in children:
            sub = _measure(child, level + 1, memo, active)
            nodes, chars, depth = nodes + sub.nodes, chars + sub.chars, max(depth, sub.depth + 1)
            if nodes > limits.MAX_YAML_NODES or chars > limits.MAX_YAML_SCALAR_CHARS:
                raise _Refused(
                    None, None, f"the document expands (with its aliases) to more than {limits.MAX_YAML_NODES} nodes or "
                    f"{limits.MAX_YAML_SCALAR_CHARS // (1 << 20)} MiB of text, far more than a config needs (an alias bomb?)",
                    node.start_mark,
                )
        active.discard(key)
        size = memo[key] = _Size(nodes, chars, depth)
    if level + size.depth > limits.MAX_YAML_DEPTH:
        raise _Refused(None, None, f"nested deeper than {limits.MAX_YAML_DEPTH} levels (through aliases)", node.start_mark)
    return size


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` within the limits above; also reads ``1e-3`` as a float (YAML 1.1 requires a dot)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > limits.MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(None, None, f"nested deeper than {limits.MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                raise _Refused(
                    None, None, f"key {quote(key.value)} is given twice in one mapping (first on line "
                    f"{first.start_mark.line + 1}); keep one (YAML would silently use the last)", key.start_mark,
                )
        return node

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            _measure(node, 1, {}, set())
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # e.g. an integer of more than 4300 digits, a bad date
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {quote(getattr(node, 'value', ''))}: {limits.first_line(e)}", node.start_mark
            ) from None


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
    """Parses YAML with the bounded safe loader, reporting every problem as one ConfigError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _Refused as e:
        raise ConfigError(f"{source}:{_line(e)} {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}:{_line(e)} invalid YAML: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:  # a backstop: compose_node caps the depth well below Python's limit
        raise ConfigError(f"{source}: nested too deeply to read") from None


def _line(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return f" line {mark.line + 1}:" if mark else ""
