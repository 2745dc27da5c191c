"""``loop.steps_per_dispatch: auto``: fused dispatches where timing shows they pay.

A fused dispatch (``K`` steps in one ``lax.scan``) saves the host work around each step
(reading the cadence, preparing the rows, the call itself: 0.1-0.3 ms on 2 CPU cores), which
is 5-10% of a small MLP's step and nothing for a CNN's; it costs one more compilation and,
for some networks on XLA:CPU, a slower step (the scan keeps buffers XLA would reuse). Results
are bit-identical either way, so the choice is left to measurement:

1. single steps for two log windows (the first pays for compilation, the second is timed);
2. if the step is short and enough of the run is left to pay for a compilation, fused
   dispatches, timed over the first window after the one they compiled in;
3. fused dispatches for the rest of the run if that window was faster, single steps if not.

Dispatches that would stop short of ``K`` at an event run as single steps, so a run
compiles at most two programs.
"""

from __future__ import annotations

from typing import Optional

MAX_FUSED = 16  # longest fused dispatch tried: longer ones gain nothing more (measured: 5-50)
MAX_STEP_SECONDS = 0.02  # slower steps spend under ~1% of their time on the host
PAYBACK = 10.0  # try only if the time left is this many compilations (a 10% gain then pays)
KEEP_FACTOR = 1.0  # keep fused dispatches if their step takes under this fraction of a single one


def fused_size(log_every: int, limit: int = MAX_FUSED) -> int:
    """The largest ``K <= limit`` dividing ``log_every``, so fused dispatches fill each window."""
    return max(k for k in range(1, min(limit, log_every) + 1) if log_every % k == 0)


def worth_trying(step_seconds: float, compile_seconds: float, steps_left: int) -> bool:
    """Whether a window of fused dispatches is worth its compilation.

    Args:
      step_seconds: one single step, measured over a whole window.
      compile_seconds: the single step's compilation (its first call), as an estimate of the
        fused step's.
      steps_left: steps of the run after the window that would decide.
    """
    return step_seconds <= MAX_STEP_SECONDS and steps_left * step_seconds >= PAYBACK * compile_seconds


class AutoFusion:
    """The loop's choice of dispatch size, made from its own log windows.

    The loop reads :attr:`size` before each dispatch, reports the first call of each
    program with :meth:`compiled` and each log window with :meth:`window_done`.

    Args:
      k: the fused size to try (``fused_size(log.every_steps)``); 1 never fuses.
    """

    def __init__(self, k: int):
        self.k = k
        self.size = 1
        self.phase = "measuring" if k > 1 else "single"
        self.windows = 0
        self.single_seconds: Optional[float] = None  # per step
        self.fused_seconds: Optional[float] = None
        self.single_compile_seconds = 0.0
        self.fused_compiled_in: Optional[int] = None  # the window the fused program compiled in

    def compiled(self, size: int, seconds: float) -> None:
        """The first call of the program for dispatches of ``size`` steps took ``seconds``."""
        if size == 1:
            self.single_compile_seconds = seconds
        elif self.fused_compiled_in is None:
            self.fused_compiled_in = self.windows + 1  # that window is not timed

    def window_done(self, steps: int, seconds: float, steps_left: int) -> None:
        """A log window of ``steps`` steps took ``seconds`` (wall time, evaluations excluded)."""
        self.windows += 1
        if self.phase == "measuring" and self.windows >= 2 and steps:
            self.single_seconds = seconds / steps
            if worth_trying(self.single_seconds, self.single_compile_seconds, steps_left):
                self.phase, self.size = "trying", self.k
            else:
                self.phase = "single"
        elif self.phase == "trying" and steps and self.fused_compiled_in is not None and self.windows > self.fused_compiled_in:
            self.fused_seconds = seconds / steps
            faster = self.fused_seconds < KEEP_FACTOR * self.single_seconds
            self.phase, self.size = ("fused", self.k) if faster else ("single", 1)

    def summary(self) -> dict:
        """What was chosen and measured, for the run's ``summary.json``."""
        per_step = lambda s: None if s is None else round(1e3 * s, 4)  # noqa: E731
        return {"chosen": self.size, "tried": self.k if self.fused_seconds is not None else None,
                "single_step_ms": per_step(self.single_seconds), "fused_step_ms": per_step(self.fused_seconds)}
