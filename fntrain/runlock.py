"""One training process per run directory: an exclusive ``flock`` on ``<output_dir>/.fntrain/lock``.

The kernel releases the lock when the process ends, however it ends (SIGKILL and
power loss included), so a stale lock never blocks a ``--resume``. The lock file holds
the holder's pid and host, so that a second ``fntrain train`` can say which process
has the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from fntrain.errors import ConfigError
from fntrain.storage import storage_errors

LOCK = Path(".fntrain") / "lock"


def _in_use(run_dir: Path, fd: int) -> ConfigError:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        holder = {}
    pid = holder.get("pid")
    who = f"pid {pid} on {holder.get('host', '?')}, since {holder.get('started', '?')}" if pid else "pid unknown"
    stop = f"stop it (kill {pid})" if pid else "stop it"
    return ConfigError(
        f"output_dir {str(run_dir)!r} is in use by another fntrain run ({who}); wait for it to finish or "
        f"{stop}, or set output_dir=<another directory>"
    )


def check_free(run_dir: Path) -> None:
    """Raises if another process holds ``run_dir``'s lock; reads only, so a refused start
    leaves the directory untouched.

    Raises:
      ConfigError: the directory is in use, naming the holder's pid.
    """
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return  # no lock file (or unreadable: acquire will say why)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run_dir, fd) from None
    finally:
        os.close(fd)  # closing releases a lock just taken


class RunLock:
    """Holds ``run_dir``'s lock until :meth:`release` (or the process's end).

    Use :meth:`acquire`; ``created`` lists the directories it made, deepest first, so that
    a start-up that fails before the run exists can remove them again.
    """

    def __init__(self, run_dir: Path, fd: int, created: list[Path]):
        self.run_dir = run_dir
        self._fd: Optional[int] = fd
        self.created = created

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        """Creates ``run_dir`` if needed and takes its lock.

        Raises:
          ConfigError: another process holds it (naming its pid).
          StorageError: the directory or the lock file cannot be written.
        """
        run_dir = Path(run_dir)
        lock_dir = (run_dir / LOCK).parent
        created = [p for p in (lock_dir, *lock_dir.parents) if not p.exists()]  # deepest first
        with storage_errors(f"cannot create the run directory {run_dir}"):
            (run_dir / LOCK).parent.mkdir(parents=True, exist_ok=True)
        with storage_errors(f"cannot write the lock file {run_dir / LOCK}"):
            fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                error = _in_use(run_dir, fd)
                os.close(fd)
                raise error from None
            try:
                holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode(), 0)
            except BaseException:
                os.close(fd)
                raise
        return cls(run_dir, fd, created)

    def release(self, *, remove_created: bool = False) -> None:
        """Releases the lock; with ``remove_created``, also removes the lock file and the
        directories ``acquire`` made, where they are empty (a start-up that wrote nothing)."""
        if self._fd is None:
            return
        if remove_created:
            (self.run_dir / LOCK).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        if remove_created:
            for path in self.created:
                try:
                    path.rmdir()
                except OSError:
                    pass
