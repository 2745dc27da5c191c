"""The CLI's error contract, and running command lines in a fresh memory-limited process.

The contract for every input a user can hand ``fntrain``: exit 2 and exactly one stderr
line starting with ``error:``, no traceback, within a time and memory bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

WORKER = str(Path(__file__).resolve().parent / "cli_worker.py")
ADDRESS_SPACE = 4 << 30  # JAX on CPU maps ~1.5 GiB of address space before any work
PEAK_RSS = 1 << 30  # a worker that validates and refuses configs stays near 0.2-0.5 GiB
CASE_SECONDS = 20.0  # per refused case, on a loaded 2-core machine (most take milliseconds)


def assert_one_error_line(rc, err: str, needles=()) -> str:
    """Exit 2, one ``error:`` line on stderr holding every needle, no traceback."""
    assert rc == 2, f"exit code {rc}, stderr:\n{err[:3000]}"
    assert "Traceback" not in err, err[:3000]
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err[:3000]}"
    line = lines[0]
    assert line.startswith("error: "), line[:300]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line[:1000]!r}"
    return line


class WorkerRun(NamedTuple):
    results: list[dict]  # per case: rc, stderr, stdout_chars, seconds
    peak_rss: int  # bytes, the worker's own maximum resident set (VmHWM)
    stderr: str  # the worker's own stderr (not a case's)


def run_worker(cases: list[dict], scratch: Path, *, address_space: int = ADDRESS_SPACE, timeout: float = 300) -> WorkerRun:
    """Runs ``[{"argv": [...], "cwd": ...}]`` through ``fntrain.cli.main`` in one fresh process (``cli_worker.py``)."""
    cases_path, results_path, err_path = scratch / "cases.json", scratch / "results.json", scratch / "worker.stderr"
    cases_path.write_text(json.dumps([{"argv": c["argv"], "cwd": str(c["cwd"])} for c in cases]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-P", WORKER, str(cases_path), str(results_path), str(address_space)],
            env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                os.waitpid(proc.pid, 0)
                raise AssertionError(f"the worker ran past {timeout} s: {err_path.read_text()[-2000:]}")
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text()
    assert proc.returncode == 0, f"worker exit {proc.returncode}: {stderr[-3000:]}"
    results = json.loads(results_path.read_text())
    return WorkerRun(results["cases"], results["peak_rss"], stderr)


def assert_refused_within_bounds(run: WorkerRun, needles: list[tuple]) -> list[str]:
    """Each case of ``run`` kept the contract with its needles, in time; the worker stayed small."""
    lines = []
    for result, case_needles in zip(run.results, needles):
        lines.append(assert_one_error_line(result["rc"], result["stderr"], case_needles))
        assert result["stdout_chars"] == 0
        assert result["seconds"] < CASE_SECONDS, (result["seconds"], lines[-1][:200])
    assert run.peak_rss < PEAK_RSS, f"peak RSS {run.peak_rss / 2**20:.0f} MiB"
    return lines
