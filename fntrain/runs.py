"""A table of the runs under a folder: which finished, which was interrupted, which is best.

Everything comes from each run's own files: ``status.json`` (see :mod:`fntrain.status`),
``config.yaml`` (the watched validation metric), ``metrics.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from fntrain.errors import ConfigError
from fntrain.plot import METRICS_FILE, read_metrics
from fntrain.status import STATUS, read_status

COLUMNS = ("name", "status", "steps", "total_steps", "best_metric", "best", "best_step", "test", "wall_time_s")


def find_runs(folder: str | Path) -> list[Path]:
    """Run directories at or below ``folder`` (those holding ``status.json`` or ``metrics.jsonl``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a directory")
    found = {p.parent for name in (STATUS, METRICS_FILE) for p in folder.rglob(name)}
    if not found:
        raise ConfigError(f"{folder}: no runs here (no {STATUS} or {METRICS_FILE} at or below it)")
    return sorted(found)


def _watched(run_dir: Path) -> tuple[str, str]:
    """``(metric, mode)`` of the run's ``early_stopping`` section (``loss``, ``min`` by default)."""
    try:
        es = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("early_stopping") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        es = {}
    return str(es.get("metric", "loss")), str(es.get("mode", "min"))


def describe(run_dir: Path, root: Path) -> dict[str, Any]:
    """One row of the table for ``run_dir``."""
    status = read_status(run_dir)
    records = read_metrics(run_dir) if (run_dir / METRICS_FILE).exists() else []
    metric, mode = _watched(run_dir)
    val = [r for r in records if r["split"] == "val" and isinstance(r.get(metric), (int, float))]
    best = (min if mode == "min" else max)(val, key=lambda r: r[metric]) if val else None
    test = next((r for r in reversed(records) if r["split"] == "test"), None)
    summary = _summary(run_dir)
    steps = max([r["step"] for r in records if r["split"] == "train"] + [int(status.get("step") or 0)])
    return {
        "name": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        "status": status["status"],
        "steps": summary.get("steps", steps),
        "total_steps": status.get("total_steps"),
        "best_metric": f"val {metric}",
        "best": best[metric] if best else None,
        "best_step": best["step"] if best else None,
        "test_metric": ("accuracy" if "accuracy" in test else "loss") if test else None,
        "test": test.get("accuracy", test.get("loss")) if test else None,
        "wall_time_s": summary.get("wall_time_s"),
        "message": status.get("message"),
    }


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def table(folder: str | Path, *, sort: Optional[str] = None) -> list[dict[str, Any]]:
    """The rows for every run under ``folder``, sorted by a column (missing values last)."""
    root = Path(folder)
    rows = [describe(d, root) for d in find_runs(root)]
    if sort is not None:
        if sort not in COLUMNS:
            raise ConfigError(f"--sort: unknown column {sort!r}; one of {', '.join(COLUMNS)}")
        rows.sort(key=lambda r: (r[sort] is None, r[sort] if r[sort] is not None else 0))
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text: one line per run."""
    header = ("run", "status", "steps", "best", "at step", "test", "wall s")
    body = [
        (
            r["name"],
            r["status"],
            f"{r['steps']}/{_cell(r['total_steps'])}",
            f"{r['best_metric']} {_cell(r['best'])}" if r["best"] is not None else "-",
            _cell(r["best_step"]),
            f"{r['test_metric']} {_cell(r['test'])}" if r["test"] is not None else "-",
            _cell(round(r["wall_time_s"], 1) if r["wall_time_s"] is not None else None),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in (header, *body))
