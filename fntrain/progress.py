"""Console progress, a callback of the loop: a tqdm bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_values(values: dict[str, float]) -> str:
    """``"loss 0.0143 accuracy 0.9978 nonfinite_steps 0"``: four significant digits."""
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())


class Progress:
    """Reports training progress at each log line and evaluation.

    Args:
      total_steps: steps in the run.
      mode: ``"bar"``, ``"lines"``, ``"none"`` or ``"auto"`` (bar on a TTY, else lines).
      stream: where to write.
      initial: the step the run starts from (a resumed run's).
      batch_size: examples per step, for the throughput shown.
    """

    def __init__(
        self, total_steps: int, mode: str = "auto", stream: TextIO | None = None, initial: int = 0, batch_size: int = 0
    ):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode, self.total, self.batch_size = mode, total_steps, batch_size
        self.start, self.start_step = time.perf_counter(), initial
        self._last_time, self._last_step = self.start, initial
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, file=self.stream, unit="step", dynamic_ncols=True)

    def on_log(self, step: int, split: str, metrics: dict) -> None:
        shown = {k: metrics[k] for k in ("loss", "accuracy") if k in metrics}
        if split != "train":
            self.write(f"{split} @ step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch"))
            return
        now = time.perf_counter()
        rate = (step - self._last_step) * self.batch_size / max(now - self._last_time, 1e-9)
        if self.bar is not None:
            self.bar.update(step - self._last_step)
            self.bar.set_postfix_str(f"{format_values(shown)} | {rate:,.0f} ex/s", refresh=True)
        elif self.mode == "lines":
            done = max(step - self.start_step, 1)
            eta = (now - self.start) / done * (self.total - step)
            self.write(f"step {step}/{self.total} | {format_values(shown)} | {rate:,.0f} ex/s | eta {eta:.0f}s")
        self._last_time, self._last_step = now, step

    def on_train_end(self, result) -> None:
        self.close()

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
            self.bar = None
