"""Early stopping as plain data and a pure update: the best evaluation so far, and how long ago."""

from __future__ import annotations

from typing import NamedTuple, Optional


class EarlyStopping(NamedTuple):
    """What early stopping remembers (saved in every checkpoint).

    Attributes:
      best_step: the step of the best evaluation so far; None before the first.
      best_metrics: that evaluation's metrics.
      evals_without_improvement: evaluations since ``best_step``.
    """

    best_step: Optional[int] = None
    best_metrics: Optional[dict] = None
    evals_without_improvement: int = 0

    def update(self, step: int, metrics: dict[str, float], *, metric: str, mode: str, min_delta: float) -> "EarlyStopping":
        """The state after an evaluation at ``step``: ``metrics[metric]`` improves on the best
        by more than ``min_delta`` (smaller is better for ``mode="min"``), or it does not."""
        if self.improved_by(metrics, metric=metric, mode=mode, min_delta=min_delta):
            return EarlyStopping(step, dict(metrics), 0)
        return self._replace(evals_without_improvement=self.evals_without_improvement + 1)

    def improved_by(self, metrics: dict[str, float], *, metric: str, mode: str, min_delta: float) -> bool:
        if self.best_metrics is None:
            return True
        sign = 1.0 if mode == "min" else -1.0
        return sign * (self.best_metrics[metric] - metrics[metric]) > min_delta

    def should_stop(self, patience: Optional[int]) -> bool:
        return patience is not None and self.evals_without_improvement >= patience

    def to_meta(self) -> dict:
        return self._asdict()

    @classmethod
    def from_meta(cls, meta: dict) -> "EarlyStopping":
        return cls(meta["best_step"], meta["best_metrics"], meta["evals_without_improvement"])
