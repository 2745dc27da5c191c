"""The log window: training metrics since the last log line, on the device until a boundary."""

from __future__ import annotations

from typing import Optional

import numpy as np

from fntrain.parallel import to_host


class LogWindow:
    """Collects each dispatch's metrics (device arrays, ``[]`` or ``[K]`` fused) and
    fetches them to the host at most once per boundary.

    The first read after new metrics arrive makes one host transfer of the whole window;
    later reads (the finiteness check, the log line's means, the checkpoint) reuse it.
    The arrays are fetched first and joined in NumPy: joining them on the device costs
    a dispatch per array.
    """

    def __init__(self, columns: Optional[dict[str, np.ndarray]] = None):
        self._pending: list[dict] = []
        self._columns: dict[str, np.ndarray] = dict(columns or {})

    def add(self, metrics: dict) -> None:
        self._pending.append(metrics)

    def columns(self) -> dict[str, np.ndarray]:
        """``{metric: [steps]}`` on the host, one column per metric."""
        if self._pending:
            host = to_host(self._pending)
            self._columns = {
                k: np.concatenate(([self._columns[k]] if self._columns else []) + [self._column(m[k]) for m in host],
                                  axis=-1)
                for k in host[0]
            }
            self._pending = []
        return self._columns

    @staticmethod
    def _column(values: np.ndarray) -> np.ndarray:
        """One dispatch's values of a metric as a column ``[steps]``."""
        return np.atleast_1d(values)

    @property
    def steps(self) -> int:
        """Steps in the window (fetches it)."""
        columns = self.columns()
        return int(columns["loss"].size) if "loss" in columns else 0

    def nonfinite(self) -> int:
        """Updates in the window whose loss or gradients were not finite."""
        return int(self.columns().get("nonfinite", np.zeros(0)).sum())

    def means(self) -> dict[str, float]:
        """Means over the window; ``nonfinite`` is summed, and ``grad_norm`` averages the
        steps that computed it (left out if none did)."""
        return column_means(self.columns())

    def clear(self) -> None:
        self._pending, self._columns = [], {}

    # Checkpoints hold the unfinished window, so a resumed run logs exactly what an
    # uninterrupted one would.
    def to_meta(self) -> dict:
        return {k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in self.columns().items()}

    @classmethod
    def from_meta(cls, meta: dict) -> "LogWindow":
        return cls({k: np.asarray(c["values"], dtype=c["dtype"]) for k, c in meta.items()})


def column_means(columns: dict[str, np.ndarray]) -> dict[str, float]:
    """The log line of a window's columns ``{metric: [steps]}``: means, ``nonfinite`` summed,
    and ``grad_norm`` over the steps that computed it (left out if none did)."""
    means = {}
    for k, v in columns.items():
        if k == "nonfinite":
            means[k] = float(v.sum())
        elif k == "grad_norm":
            computed = v[~np.isnan(v)]
            if computed.size:
                means[k] = float(computed.mean())
        else:
            means[k] = float(v.mean())
    return means
