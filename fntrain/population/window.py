"""The population's log window: each member's training metrics since the last log line."""

from __future__ import annotations

from typing import Optional

import numpy as np

from fntrain.parallel import to_host
from fntrain.window import column_means


class MemberWindow:
    """Collects each dispatch's metrics (device arrays ``[M]``, or ``[M, K]`` fused) and
    fetches them to the host at most once per boundary, as :class:`fntrain.window.LogWindow`
    does for one run; columns are ``[M, steps]``."""

    def __init__(self, columns: Optional[dict[str, np.ndarray]] = None):
        self._pending: list[dict] = []
        self._columns: dict[str, np.ndarray] = dict(columns or {})

    def add(self, metrics: dict) -> None:
        self._pending.append(metrics)

    def columns(self) -> dict[str, np.ndarray]:
        """``{metric: [M, steps]}`` on the host."""
        if self._pending:
            host = to_host(self._pending)
            self._columns = {
                k: np.concatenate(
                    ([self._columns[k]] if self._columns else []) + [np.asarray(m[k]).reshape(len(m[k]), -1) for m in host],
                    axis=1,
                )
                for k in host[0]
            }
            self._pending = []
        return self._columns

    @property
    def steps(self) -> int:
        columns = self.columns()
        return int(columns["loss"].shape[1]) if "loss" in columns else 0

    def nonfinite(self, member: int) -> int:
        """Updates of ``member`` in the window whose loss or gradients were not finite."""
        column = self.columns().get("nonfinite")
        return 0 if column is None else int(column[member].sum())

    def means(self, member: int) -> dict[str, float]:
        """``member``'s means over the window, as :meth:`fntrain.window.LogWindow.means`."""
        return column_means({k: v[member] for k, v in self.columns().items()})

    def clear(self) -> None:
        self._pending, self._columns = [], {}

    def to_meta(self) -> dict:
        return {k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in self.columns().items()}

    @classmethod
    def from_meta(cls, meta: dict) -> "MemberWindow":
        return cls({k: np.asarray(c["values"], dtype=c["dtype"]) for k, c in meta.items()})
