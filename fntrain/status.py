"""A run's status, from its own files: ``status.json`` in the run directory.

The loop writes it when a run starts (``running``, with the process id and host), at each
checkpoint (the step reached), and when it ends: ``finished``, ``interrupted`` (SIGTERM or
SIGINT), ``diverged`` (NaN/inf loss) or ``failed`` (any other error, with its message). A
run whose file still says ``running`` but whose process is gone was killed, and reads as
``interrupted``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

STATUS = "status.json"
STATUSES = ("running", "finished", "interrupted", "failed", "diverged")


def _write(path: Path, record: dict) -> None:
    from fntrain.storage import atomic_write, storage_errors

    with storage_errors(f"cannot write {path}"):
        atomic_write(path, (json.dumps(record, indent=2) + "\n").encode())


class StatusFile:
    """The loop's writer of ``status.json`` (a callback; process 0 only).

    Args:
      run_dir: the ``RunDir``.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir.path) / STATUS
        self.writer = run_dir.writer
        self.record: dict[str, Any] = {}

    def on_train_start(self, run) -> None:
        self.record = {
            "status": "running",
            "step": run.start_step,
            "total_steps": run.total_steps,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "resumed_from_step": run.start_step or None,
        }
        self._save()

    def on_checkpoint(self, step: int, path: str) -> None:
        if self.record:
            self.record["step"] = step
            self._save()

    def on_train_end(self, result) -> None:
        self.end("finished", step=int(result.summary["steps"]))

    def end(self, status: str, *, step: Optional[int] = None, message: Optional[str] = None) -> None:
        """Records how the run ended (once the run has started)."""
        if not self.record:
            return
        self.record.update(status=status, ended=time.time())
        if step is not None:
            self.record["step"] = step
        if message:
            self.record["message"] = message[:500]
        self._save()

    def _save(self) -> None:
        if self.writer and self.path.parent.is_dir():
            _write(self.path, self.record)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_status(run_dir: str | Path) -> dict:
    """The run's status record; ``{"status": "unknown"}`` for a run directory without one.

    A ``running`` record whose process (on this host) no longer exists reads as
    ``interrupted``, with ``"killed": true``.
    """
    path = Path(run_dir) / STATUS
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"status": "unknown"}
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        return {"status": "unknown"}
    if record["status"] == "running" and record.get("host") == socket.gethostname() and not _alive(int(record.get("pid", 0))):
        record = {**record, "status": "interrupted", "killed": True}
    return record
