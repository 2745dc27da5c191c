"""Writing files safely, and a filesystem failure as one line that says what to do.

Every whole-file write of fntrain goes through :func:`atomic_write`, so readers see the
old file or the new one, never a part. A write that fails (a full disk, a read-only
or foreign directory, a path through a file) becomes a :class:`~fntrain.errors.StorageError`
naming the file, the cause and the fix; the CLI prints it as one ``error:`` line and
exits 2, and the run resumes with ``--resume`` once the cause is gone.

orbax-checkpoint writes through TensorStore, whose failures arrive as ``ValueError``
with an absl status such as ``RESOURCE_EXHAUSTED`` (a full disk) rather than an
``OSError``; :func:`errno_of` reads both.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from fntrain.errors import StorageError

RESUME = "continue with: fntrain train CONFIG --resume"
_FULL = f"free space on that disk (or set output_dir=<a directory on another disk>), then {RESUME}"
_PERMS = f"fix its permissions or set output_dir=<a directory you can write>, then {RESUME}"
_ADVICE = {
    errno.ENOSPC: ("no space left on the device", _FULL),
    errno.EDQUOT: ("disk quota exceeded", _FULL),
    errno.EFBIG: ("file too large for the file system", _FULL),
    errno.EROFS: ("the file system is read-only", f"set output_dir=<a writable directory>, or make it writable and {RESUME}"),
    errno.EACCES: ("permission denied", _PERMS),
    errno.EPERM: ("operation not permitted", _PERMS),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "set output_dir=<a directory>"),
    errno.EISDIR: ("it is a directory", "set output_dir=<another directory>"),
    errno.ENAMETOOLONG: ("the path is too long", "set output_dir=<a shorter path>"),
    errno.EIO: ("input/output error (the disk may be failing)", f"check the disk, then {RESUME}"),
}
# In the messages of errors that are not OSErrors, most precise first: TensorStore's
# "... No space left on device [os_error_code='28']", strerror texts, then absl statuses.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_MESSAGES = tuple((os.strerror(code), code) for code in _ADVICE) + (
    ("RESOURCE_EXHAUSTED", errno.ENOSPC),
    ("PERMISSION_DENIED", errno.EACCES),
)


def errno_of(exc: BaseException) -> Optional[int]:
    """The filesystem cause of ``exc`` (or of an exception it was raised from), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _ADVICE:
            return exc.errno
        text = str(exc)
        found = _OS_ERROR_CODE.search(text)
        if found and int(found.group(1)) in _ADVICE:
            return int(found.group(1))
        for marker, code in _MESSAGES:
            if marker in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def describe(exc: BaseException, action: str) -> str:
    """``"<action>: <cause>; <what to do>"``, for an exception :func:`errno_of` recognises."""
    code = errno_of(exc)
    cause, advice = _ADVICE.get(code, (str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, RESUME))
    filename = getattr(exc, "filename", None)
    where = f" ({filename})" if filename and "/" not in action else ""  # where the action names no path
    return f"{action}{where}: {cause}; {advice}"


@contextlib.contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Re-raises a filesystem failure inside the block as a one-line :class:`StorageError`.

    Args:
      action: what was being done, e.g. ``"cannot write /runs/a/params.npz"``.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - only filesystem causes are converted; others pass through
        if errno_of(e) is None:
            raise
        raise StorageError(describe(e, action)) from None


def fsync_dir(path: Path) -> None:
    """Makes a rename or a new file in ``path`` durable (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    Raises:
      StorageError: the write failed (disk full, read-only, permissions); the old file is intact.
    """
    path = Path(path)
    with storage_errors(f"cannot write {path}"):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def append_line(path: Path, line: str) -> None:
    """Appends one line (a newline is added) to a text file.

    Raises:
      StorageError: the write failed; the file may end in a part of the line, which a
        resumed run drops (see ``RunDir.truncate_metrics``).
    """
    with storage_errors(f"cannot write {path}"):
        with open(path, "a") as f:
            f.write(line + "\n")
