"""Callbacks: the one way outside code joins the training loop.

A callback is any object with any of these methods, each optional::

    on_train_start(run)                      # run: RunInfo (config, net, splits, output_dir, total_steps, ...)
    on_log(step, split, metrics)             # after each line written to metrics.jsonl
    on_eval(step, split, metrics, state)     # after each evaluation, with the TrainState evaluated
    on_checkpoint(step, path)                # after each checkpoint is written
    on_train_end(result)                     # result: fntrain.TrainResult

They run on the host, on process 0, only at event boundaries, never inside the jitted
step. The loop's own outputs (``metrics.jsonl``, the progress display) are callbacks too.
From a config, ``callbacks: [{name: module.path:factory, kwargs: {...}}]`` calls
``factory(**kwargs)`` for each entry and uses what it returns.

Example:
  >>> class PrintBest:
  ...     def __init__(self): self.best = None
  ...     def on_eval(self, step, split, metrics, state):
  ...         if split == "val": self.best = max(self.best or 0.0, metrics["accuracy"])
  >>> fntrain.train(config, callbacks=[PrintBest()])
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from fntrain.errors import ConfigError

METHODS = ("on_train_start", "on_log", "on_eval", "on_checkpoint", "on_train_end")


class RunInfo(NamedTuple):
    """What ``on_train_start`` gets: the run as built, before the first step.

    Attributes:
      config: the resolved ``fntrain.Config``.
      net: the network (``fntrain.nn.Module``).
      splits: the ``fntrain.data.Splits`` (train, val, test arrays; val/test may be None).
      output_dir: the run directory.
      total_steps: steps in the whole run.
      steps_per_epoch: batches per pass over the training split.
      start_step: the step training starts from (above 0 when resumed).
    """

    config: Any
    net: Any
    splits: Any
    output_dir: str
    total_steps: int
    steps_per_epoch: int
    start_step: int


class CallbackError(ConfigError):
    """A user's callback raised; the run stopped, its last checkpoint intact (CLI exit 2)."""


def from_config(config) -> list[tuple[str, Any]]:
    """``(name, callback)`` for each entry of the config's ``callbacks``: ``factory(**kwargs)``."""
    from fntrain.registry import call_user

    built = []
    for i, entry in enumerate(config.callbacks):
        callback = call_user(entry.function(), entry.kwargs_dict, f"callbacks[{i}]")
        if not any(hasattr(callback, m) for m in METHODS):
            raise ConfigError(
                f"callbacks[{i}]: {entry.name!r} returned {type(callback).__name__}, which has none of the "
                f"callback methods ({', '.join(METHODS)})"
            )
        built.append((entry.name, callback))
    return built


class Callbacks:
    """Calls each callback's methods in order, where it has them.

    Args:
      builtin: the loop's own outputs; their errors (a full disk, say) pass through unchanged.
      user: the user's callbacks, or ``(name, callback)`` pairs (a name for messages); an
        exception in one becomes a one-line :class:`CallbackError` naming the callback, the
        method and the step.
      active: False on processes other than 0, where nothing is called.
    """

    def __init__(self, builtin: Sequence[Any] = (), user: Sequence[Any] = (), *, active: bool = True):
        named = [c if isinstance(c, tuple) else (type(c).__name__, c) for c in user]
        self.entries = [(c, None) for c in builtin] + [(c, name) for name, c in named]
        self.active = active

    def _call(self, method: str, step: int, *args) -> None:
        if not self.active:
            return
        for callback, user_name in self.entries:
            fn = getattr(callback, method, None)
            if fn is None:
                continue
            if user_name is None:
                fn(*args)
                continue
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - any failure of user code ends the run cleanly
                detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                raise CallbackError(
                    f"callback {user_name!r} failed in {method} at step {step}: "
                    f"{type(e).__name__}{': ' + detail if detail else ''}; the last checkpoint is intact "
                    "(fix the callback, then continue with --resume)"
                ) from e

    def on_train_start(self, run: RunInfo) -> None:
        self._call("on_train_start", run.start_step, run)

    def on_log(self, step: int, split: str, metrics: dict) -> None:
        self._call("on_log", step, step, split, metrics)

    def on_eval(self, step: int, split: str, metrics: dict, state) -> None:
        self._call("on_eval", step, step, split, metrics, state)

    def on_checkpoint(self, step: int, path: str) -> None:
        self._call("on_checkpoint", step, step, path)

    def on_train_end(self, result) -> None:
        self._call("on_train_end", int(result.summary["steps"]), result)

    def close(self) -> None:
        """Closes the built-in outputs that hold files open, however the run ended."""
        for callback, user_name in self.entries:
            if user_name is None and hasattr(callback, "close"):
                callback.close()


class MetricsFile:
    """Writes each logged line to the run directory's ``metrics.jsonl``."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def on_log(self, step: int, split: str, metrics: dict) -> None:
        self.run_dir.log(step, split, metrics)
