"""SIGTERM and SIGINT: the first becomes a flag the loop honours; a second exits at once.

``fntrain train`` installs the handlers first thing (:func:`install`, before JAX is
imported), so a signal that arrives during start-up or compilation is never lost:
without them SIGTERM kills the process silently, and a Ctrl-C can land inside one of
JAX's callbacks, which swallows the ``KeyboardInterrupt``. The loop checks the flag
between its start-up stages and after each dispatch, so it stops at a point where the
run directory is consistent (and resumable with ``--resume``).

This module imports nothing heavy, so that installing the handlers costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; the run stopped where its directory is consistent.

    Attributes:
      exit_code: 128 + the signal number (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class SignalGuard:
    """Turns the first SIGTERM/SIGINT into ``received``; a second one exits at once.

    Attributes:
      received: the first signal's number, or None.
      starting: True until the loop starts its first step (it changes what the
        handler says it will do).
    """

    def __init__(self):
        self.received: Optional[int] = None
        self.starting = True
        self._previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            print(f"\nsecond {name}: exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received = signum
        what = "stopping before the first step" if self.starting else "finishing this step and writing a checkpoint"
        print(f"\n{name}: {what} (send it again to exit at once)", file=sys.stderr, flush=True)

    def install(self) -> "SignalGuard":
        """Installs the handlers (only the main thread may; elsewhere this does nothing)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def uninstall(self) -> None:
        """Puts the previous handlers back."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""


_installed: Optional[SignalGuard] = None


def install() -> SignalGuard:
    """Installs the process-wide guard (once) and returns it; ``train`` then uses it."""
    global _installed
    if _installed is None:
        _installed = SignalGuard().install()
    return _installed


def uninstall() -> None:
    """Removes the process-wide guard, restoring the handlers it replaced."""
    global _installed
    if _installed is not None:
        _installed.uninstall()
        _installed = None


@contextlib.contextmanager
def guard() -> Iterator[SignalGuard]:
    """The process-wide guard if :func:`install` ran (signals since then count), else a
    guard of its own for the duration of the block."""
    if _installed is not None:
        yield _installed
        return
    own = SignalGuard().install()
    try:
        yield own
    finally:
        own.uninstall()
