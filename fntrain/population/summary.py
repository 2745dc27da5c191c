"""A population's ``summary.json`` part: members ranked, and mean and std over seeds per grid point."""

from __future__ import annotations

from typing import Optional

import numpy as np

from fntrain.population.members import Member


def rank(finals: list[dict], split: str, metric: str, mode: str) -> list[int]:
    """Member indices, best first, by ``finals[m][split][metric]`` (``mode`` min: smaller is
    better); members without that value come last, ties keep member order."""
    sign = 1.0 if mode == "min" else -1.0

    def key(m: int):
        value = finals[m].get(split, {}).get(metric)
        missing = value is None or not np.isfinite(value)
        return (missing, 0.0 if missing else sign * value, m)

    return sorted(range(len(finals)), key=key)


def grid_points(members: list[Member], finals: list[dict]) -> list[dict]:
    """Per grid point: its values, its members, and per split and metric the mean and the
    standard deviation (``ddof=0``) of the members' final values over the seeds."""
    points: dict[tuple, list[int]] = {}
    for m in members:
        points.setdefault(tuple(sorted(m.values.items())), []).append(m.index)
    out = []
    for values, indices in points.items():
        stats: dict[str, dict] = {}
        for split in sorted({s for i in indices for s in finals[i]}):
            names = sorted({k for i in indices for k in finals[i].get(split, {})})
            for name in names:
                xs = [finals[i][split][name] for i in indices if name in finals[i].get(split, {})]
                xs = [x for x in xs if isinstance(x, (int, float))]
                if xs:
                    stats.setdefault(split, {})[name] = {"mean": float(np.mean(xs)), "std": float(np.std(xs))}
        out.append({"values": dict(values), "members": indices, "seeds": [members[i].seed for i in indices], "final": stats})
    return out


def population_summary(
    members: list[Member], finals: list[dict], early: list, stopped_at: list[Optional[int]], *, split: str, metric: str, mode: str
) -> dict:
    """The ``population`` entry of ``summary.json``.

    Args:
      members: the members.
      finals: each member's latest metrics per split (``{"val": {...}, "test": {...}}``).
      early: each member's :class:`~fntrain.early_stopping.EarlyStopping`.
      stopped_at: the step each member stopped early at, or None.
      split, metric, mode: what the ranking orders by.
    """
    order = rank(finals, split, metric, mode)
    return {
        "size": len(members),
        "ranked_by": {"split": split, "metric": metric, "mode": mode},
        "ranking": order,
        "best_member": order[0],
        "members": [
            {
                "member": m.index,
                "seed": m.seed,
                "values": m.values,
                "overrides": m.describe(),
                "final": finals[m.index],
                "best_step": early[m.index].best_step,
                "stopped_early_at": stopped_at[m.index],
            }
            for m in members
        ],
        "grid": grid_points(members, finals),
    }
