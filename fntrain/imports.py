"""Importing the ``module.path:function`` a config names, from the folder it belongs to.

A config that names Python code imports and runs it, like a script. This module makes that
import predictable and its failures one-line ``ConfigError``\\s:

* the name must be absolute and dotted (``pkg.models:build``): a relative ``..evil:build``
  is refused;
* the folder (``module_dir``, normally the config file's) is *appended* to ``sys.path``, and
  only when it holds the named top-level module, so it never shadows the standard library
  or an installed package; when another module of that name would be imported instead (a
  ``queue.py`` beside the config, say), the import is refused, naming both files;
* whatever the module raises while it is imported (an exception, a syntax error,
  ``sys.exit``) becomes a ConfigError with the module and the first line of its error;
  ``KeyboardInterrupt`` stays the interrupt it is.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import traceback
from typing import Callable, Optional

from fntrain.errors import ConfigError
from fntrain.limits import first_line, quote, shorten


def split_name(path: str) -> tuple[str, str]:
    """``"pkg.mod:fn"`` -> ``("pkg.mod", "fn")``, refusing names that are not absolute and dotted."""
    module_name, _, attr = path.partition(":")
    if module_name.startswith("."):
        raise ConfigError(
            f"{quote(path)}: a relative module name cannot be imported from a config; name the module as it is "
            f"imported from the config's folder or the installed packages, e.g. my_models:build"
        )
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise ConfigError(
            f"{quote(path)}: {quote(module_name)} is not a module path (dotted Python names, e.g. my_pkg.models)"
        )
    if not attr.isidentifier():
        raise ConfigError(f"{quote(path)}: {quote(attr)} is not a function name; write module.path:function")
    return module_name, attr


def import_function(path: str, module_dir: Optional[str] = None) -> Callable:
    """The callable ``path`` (``module.path:function``) names.

    Args:
      path: ``module.path:function``.
      module_dir: the folder the module is looked for in after the standard library and the
        installed packages; None: those only.

    Raises:
      ConfigError: a bad name, a module that cannot be found or fails while imported, a
        module shadowed by another of its name, a missing or non-callable attribute.
    """
    module_name, attr = split_name(path)
    if module_dir is not None:
        _use_folder(module_name, module_dir, path)
    module = _import_module(module_name, path, module_dir)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} ({_where(module)}) has no attribute {attr!r}") from None
    if not callable(fn):
        raise ConfigError(f"{quote(path)} is not callable (it is a {type(fn).__name__})")
    return fn


def _use_folder(module_name: str, folder: str, path: str) -> None:
    """Appends ``folder`` to ``sys.path`` if it holds the top-level module; refuses a shadowed one."""
    top = module_name.partition(".")[0]
    try:
        local = importlib.machinery.PathFinder.find_spec(top, [folder])
    except (ImportError, OSError, ValueError):
        local = None
    if local is None:
        return  # not in the folder: the standard library or an installed package, if anywhere
    if folder not in sys.path:
        sys.path.append(folder)
    if local.origin in (None, "namespace"):
        return  # a plain directory (a namespace package) merges with others of its name
    try:
        found = importlib.util.find_spec(top)  # what `import top` gives: sys.modules or sys.path order
    except (ImportError, ValueError):
        return
    origin = getattr(found, "origin", None)
    if origin and os.path.realpath(origin) != os.path.realpath(local.origin):
        raise ConfigError(
            f"{quote(path)}: the module {top!r} beside the config ({local.origin}) has the name of another "
            f"module, {origin}, which Python imports instead; rename {os.path.basename(local.origin)} "
            f"(and the config's name for it)"
        )


def _import_module(module_name: str, path: str, module_dir: Optional[str]):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name != e.name and not module_name.startswith(e.name + "."):
            raise ConfigError(f"importing {module_name!r} for {quote(path)} failed: {_error(e)}") from None
        where = f"in {module_dir} (the config's folder) or" if module_dir else "among"
        raise ConfigError(
            f"cannot import {module_name!r} for {quote(path)}: no module {e.name!r} {where} the installed "
            f"packages; put it beside the config, or give its folder as module_dir"
        ) from None
    except SystemExit as e:
        raise ConfigError(
            f"importing {module_name!r} for {quote(path)} called sys.exit({quote(e.code)}); a module a config "
            f"names must not exit when imported (guard the script part with `if __name__ == '__main__':`)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any error of the user's module, reported in one line
        raise ConfigError(f"importing {module_name!r} for {quote(path)} failed: {_error(e)}") from None


def _error(e: BaseException) -> str:
    """``Type: first line (file:line)`` of an error raised while importing."""
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({e.filename}, line {e.lineno})"
    frames = traceback.extract_tb(e.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {shorten(first_line(str(e)), 200)}{where}"


def _where(module) -> str:
    return getattr(module, "__file__", None) or "built in"
