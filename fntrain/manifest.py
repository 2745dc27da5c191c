"""Checksums that seal a checkpoint: a SHA-256 per file, written after orbax finishes.

orbax renames a checkpoint into place when its write completes, but it does not notice
bytes that change afterwards (a bit flip, a truncated or emptied file): such a
checkpoint restores silently and the run diverges. :func:`seal` hashes every file of a
finished checkpoint (flushing each to the disk), then writes the hashes to
``fntrain_checksums.json`` atomically as the last step; :func:`verify` checks them
before a restore. A checkpoint without the file is incomplete: the process stopped
between orbax's write and the seal.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from fntrain import storage

NAME = "fntrain_checksums.json"
_CHUNK = 1 << 20


def _sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
        if sync:
            os.fsync(f.fileno())  # orbax does not: make the checkpoint durable before sealing it
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != NAME)


def seal(directory: Path) -> None:
    """Writes the checksums of every file under ``directory`` (a finished checkpoint).

    Raises:
      StorageError: the checksums cannot be written (the checkpoint stays unsealed).
    """
    directory = Path(directory)
    files = {str(p.relative_to(directory)): _sha256(p, sync=True) for p in _files(directory)}
    for sub in {p.parent for p in _files(directory)}:
        storage.fsync_dir(sub)
    storage.atomic_write(directory / NAME, (json.dumps({"sha256": files}, indent=1, sort_keys=True) + "\n").encode())


def is_sealed(directory: Path) -> bool:
    return (Path(directory) / NAME).is_file()


def unseal(directory: Path) -> None:
    """Removes the checksums first, so that a deletion cut short leaves an incomplete
    checkpoint, never a sealed one with files missing."""
    (Path(directory) / NAME).unlink(missing_ok=True)


def verify(directory: Path) -> Optional[str]:
    """None if every file matches its checksum, else what is wrong, e.g.
    ``"state/d/3f2a changed since it was written (SHA-256 mismatch)"``.

    Raises:
      OSError: a file cannot be read for a reason other than damage (e.g. permissions).
    """
    directory = Path(directory)
    try:
        files = json.loads((directory / NAME).read_text())["sha256"]
    except FileNotFoundError:
        return f"it has no {NAME} (its write did not finish)"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"its {NAME} is unreadable"
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != expected:
            return f"{name} changed since it was written (SHA-256 mismatch)"
    return None
