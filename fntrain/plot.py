"""Learning curves of one or more runs, from their ``metrics.jsonl``, as a PNG (matplotlib, Agg).

One panel per metric; in each, every run's training curve (solid) and validation curve
(dashed) in the run's colour, its test value as a dot at the last step, and a legend by
run name. A panel whose values are positive and span more than a decade has a log scale.
A population's members are plotted as runs of their own. A run still in progress is plotted as far as it got; a last line cut short by a kill is
skipped with a warning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

from fntrain.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
# Bookkeeping, not curves: shown only when asked for by name.
_NOT_BY_DEFAULT = ("epoch", "nonfinite_steps", "learning_rate", "grad_norm", "member")


def read_metrics(run_dir: str | Path, warn: Callable[[str], None] = lambda message: None) -> list[dict]:
    """The records of a run's ``metrics.jsonl``; a cut-off last line is skipped (``warn`` says so).

    Raises:
      ConfigError: the directory holds no ``metrics.jsonl``, or a line other than the last is not JSON.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {METRICS_FILE} here; expected a run directory written by fntrain train")
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record or "split" not in record:
                raise ValueError("not a metrics record")
        except ValueError:
            if number == len(lines):
                warn(f"{path}: line {number} is cut short (a run killed while writing it?); plotting the lines before it")
                continue
            raise ConfigError(f"{path}: line {number} is not a metrics record; expected one JSON object per line") from None
        records.append(record)
    return records


def default_metrics(runs: dict[str, list[dict]]) -> list[str]:
    """``loss`` first, then every other metric the runs logged, bookkeeping left out."""
    names = {k for records in runs.values() for r in records for k in r if k not in ("step", "split")}
    names -= set(_NOT_BY_DEFAULT)
    names = {n for n in names if not n.startswith("layers/")}
    return sorted(names, key=lambda n: (n != "loss", n))


def _series(records: list[dict], split: str, metric: str, x: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[metric]) for r in records if r["split"] == split and metric in r and x in r]
    points = [(a, b) for a, b in points if isinstance(b, (int, float)) and math.isfinite(b)]
    return [a for a, _ in points], [b for _, b in points]


def by_member(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """A population's records (lines with ``member``, :mod:`fntrain.population`) as one run per
    member, ``"<run> member <i>"``; other runs as they are."""
    out: dict[str, list[dict]] = {}
    for name, records in runs.items():
        if not any("member" in r for r in records):
            out[name] = records
            continue
        for r in records:
            out.setdefault(f"{name} member {r.get('member')}", []).append(r)
    return out


def run_names(run_dirs: Sequence[str | Path]) -> list[str]:
    """Legend names: each directory's name, with its parent's where two would read alike."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [f"{Path(d).resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def plot_runs(
    run_dirs: Sequence[str | Path],
    *,
    metrics: Optional[Sequence[str]] = None,
    x: str = "step",
    warn: Callable[[str], None] = lambda message: None,
):
    """A matplotlib ``Figure`` of the runs' curves (see the module docstring).

    Args:
      run_dirs: run directories.
      metrics: the panels; None: ``loss`` and every other metric logged.
      x: ``"step"`` or ``"epoch"``.

    Raises:
      ConfigError: no run, a directory that is not a run, or a metric no run logged.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in ("step", "epoch"):
        raise ConfigError(f"--x must be step or epoch, got {x!r}")
    if not run_dirs:
        raise ConfigError("no run directory given")
    runs = by_member(dict(zip(run_names(run_dirs), (read_metrics(d, warn) for d in run_dirs))))
    logged = default_metrics(runs) + list(_NOT_BY_DEFAULT)
    metrics = list(metrics) if metrics else default_metrics(runs)
    unknown = [m for m in metrics if m not in {k for rs in runs.values() for r in rs for k in r}]
    if unknown:
        raise ConfigError(f"--metrics: no run logged {', '.join(map(repr, unknown))}; logged: {', '.join(logged)}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        _panel(ax, runs, metric, x)
    fig.tight_layout()
    return fig


def _panel(ax, runs: dict[str, list[dict]], metric: str, x: str) -> None:
    values = []
    for i, (name, records) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        for split, style in (("train", "-"), ("val", "--.")):
            xs, ys = _series(records, split, metric, x)
            if xs:
                ax.plot(xs, ys, style, color=colour, label=f"{name} {split}", gid=f"{name}|{split}|{metric}")
                values += ys
        xs, ys = _series(records, "test", metric, x)
        if xs:
            ax.plot(xs, ys, "o", color=colour, label=f"{name} test", gid=f"{name}|test|{metric}")
            values += ys
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set_title(metric)
    ax.set_xlabel(x)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)


def save_plot(fig, path: str | Path) -> Path:
    """Writes the figure as a PNG (atomically) and closes it."""
    import io

    import matplotlib.pyplot as plt

    from fntrain.storage import atomic_write, storage_errors

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    with storage_errors(f"cannot write {path}"):
        atomic_write(path, buffer.getvalue())
    return path
