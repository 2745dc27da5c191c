"""A trained run's forward pass as one ``jax.export`` file: parameters baked in, batch symbolic.

The file holds the evaluation-mode forward pass of :meth:`fntrain.trained.TrainedRun.forward`
(the ``target_scale`` of ``data.standardize_targets`` included, so it returns what
``predict`` returns) with the parameters and model state as constants, serialised by
``jax.export``. JAX alone loads and calls it, on any number of rows:

  >>> exp = jax.export.deserialize(open("model.jaxexport", "rb").read())
  >>> y = exp.call(x)                                  # x [B, *input_shape] -> [B, ...]

It is lowered for the current platform and, where that works, for ``cpu`` and ``cuda``
too; ``exp.platforms`` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import jax

from fntrain import storage
from fntrain.errors import ConfigError
from fntrain.limits import first_line

__all__ = ["ExportedRun", "export_forward", "export_run"]

WANTED = ("cpu", "cuda")  # lowered for too, besides the current platform, where possible


class ExportedRun(NamedTuple):
    """What ``export_run`` wrote.

    Attributes:
      path: the file.
      platforms: the platforms it runs on.
      skipped: why a wanted platform is missing (e.g. a kernel without a cuda lowering), or None.
      input: ``[b, *input_shape]`` and its dtype, ``b`` symbolic; output: likewise.
    """

    path: Path
    platforms: tuple[str, ...]
    skipped: Optional[str]
    input: jax.ShapeDtypeStruct
    output: jax.ShapeDtypeStruct


def _current_platform() -> str:
    platform = jax.devices()[0].platform
    if platform == "gpu":
        version = str(getattr(getattr(jax.devices()[0], "client", None), "platform_version", ""))
        platform = "rocm" if "rocm" in version.lower() else "cuda"
    return platform


def export_forward(run, platforms: Optional[Sequence[str]] = None) -> tuple[jax.export.Exported, Optional[str]]:
    """``(exported, skipped)``: ``run.forward`` exported for ``platforms`` (None: the current
    one plus cpu and cuda, falling back to the current one alone, with the reason in ``skipped``).

    Raises:
      ConfigError: the network cannot be exported with a symbolic batch dimension.
    """
    dims = ", ".join(["b", *map(str, run.input_shape)])
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), run.input_dtype)
    current = _current_platform()
    tries = [list(platforms)] if platforms else [list(dict.fromkeys([current, *WANTED])), [current]]
    forward = jax.jit(run.forward)
    skipped = None
    for i, wanted in enumerate(tries):
        try:
            return jax.export.export(forward, platforms=wanted)(spec), skipped
        except Exception as e:  # noqa: BLE001 - any lowering failure: try fewer platforms, else report it
            if i + 1 == len(tries):
                raise ConfigError(f"cannot export model {run.config.model.name!r} for {', '.join(wanted)} with a "
                                  f"symbolic batch [{dims}]: {first_line(e)}") from None
            skipped = f"lowering for {', '.join(p for p in wanted if p not in tries[i + 1])} failed: {first_line(e)}"
    raise AssertionError("unreachable")


def export_run(run_dir, path, *, platforms: Optional[Sequence[str]] = None) -> ExportedRun:
    """Exports a finished run's forward pass to ``path`` (written atomically), see the module docstring.

    Args:
      run_dir: the run directory (``fntrain.load_run`` reads it).
      path: the file to write, e.g. ``model.jaxexport``.
      platforms: e.g. ``["cpu"]``; None: the current platform, and cpu and cuda where they lower.

    Raises:
      ConfigError: as ``load_run``, or the network cannot be exported.
      StorageError: the file cannot be written.
    """
    from fntrain.trained import TrainedRun, load_run

    run = run_dir if isinstance(run_dir, TrainedRun) else load_run(run_dir)
    exported, skipped = export_forward(run, platforms)
    path = Path(path)
    storage.atomic_write(path, bytes(exported.serialize()))
    (spec,), (out,) = exported.in_avals, exported.out_avals
    return ExportedRun(path, tuple(exported.platforms), skipped, jax.ShapeDtypeStruct(spec.shape, spec.dtype),
                    jax.ShapeDtypeStruct(out.shape, out.dtype))
