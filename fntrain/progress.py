"""Console progress: a tqdm bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _format(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())


class Progress:
    """Reports training progress.

    Args:
      total_steps: steps in the run.
      mode: ``"bar"``, ``"lines"``, ``"none"`` or ``"auto"`` (bar on a TTY, else lines).
      stream: where to write.
    """

    def __init__(self, total_steps: int, mode: str = "auto", stream: TextIO | None = None, initial: int = 0):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode, self.total = mode, total_steps
        self.start, self.start_step = time.perf_counter(), initial
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, file=self.stream, unit="step", dynamic_ncols=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def report(self, step: int, values: dict[str, float], examples_per_second: float) -> None:
        """Shows the latest training metrics (called at log boundaries only)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{_format(values)} | {examples_per_second:,.0f} ex/s", refresh=True)
        elif self.mode == "lines":
            elapsed = time.perf_counter() - self.start
            done = max(step - self.start_step, 1)
            eta = elapsed / done * (self.total - step)
            self.write(
                f"step {step}/{self.total} | {_format(values)} | {examples_per_second:,.0f} ex/s | eta {eta:.0f}s"
            )

    def write(self, line: str) -> None:
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
