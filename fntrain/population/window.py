"""The population's log window: each member's training metrics since the last log line."""

from __future__ import annotations

import numpy as np

from fntrain.window import LogWindow, column_means


class MemberWindow(LogWindow):
    """:class:`fntrain.window.LogWindow` over a population: each dispatch's metrics are
    device arrays ``[M]`` (or ``[M, K]`` fused), fetched at most once per boundary, and
    the columns are ``[M, steps]``."""

    @staticmethod
    def _column(values: np.ndarray) -> np.ndarray:
        return np.asarray(values).reshape(len(values), -1)

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
