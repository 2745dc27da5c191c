"""``fntrain`` with a pause at a chosen moment of a checkpoint write, so a test can SIGKILL it there.

    FNTRAIN_TEST_PAUSE=<phase>:<n> FNTRAIN_TEST_FLAG=<file> python tests/fault_worker.py train CONFIG ...

The n-th time the run reaches <phase> it creates <file> and sleeps; the test waits for
the file and kills the process. Phases, in the order of one checkpoint write:

- ``save``: a checkpoint write begins (nothing of it on disk yet);
- ``rename``: orbax has written a directory's data into its ``*.orbax-checkpoint-tmp*``
  directory and is about to rename it into place;
- ``seal``: the step directory is in place, its checksums not yet written;
- ``prune``: an old checkpoint has been unsealed and is about to be deleted.

Without ``FNTRAIN_TEST_PAUSE`` this is ``fntrain`` unchanged: pauses only sleep, so the
numbers are those of an uninterrupted run.
"""

import os
import sys
import time
from pathlib import Path

PHASE, _, NTH = os.environ.get("FNTRAIN_TEST_PAUSE", "").partition(":")
FLAG = os.environ.get("FNTRAIN_TEST_FLAG", "")
_seen = {}


def _maybe_pause(phase: str) -> None:
    _seen[phase] = _seen.get(phase, 0) + 1
    if phase == PHASE and _seen[phase] == int(NTH or 1):
        Path(FLAG).write_text(phase)
        time.sleep(60)


def _patch() -> None:
    from orbax.checkpoint._src.path import atomicity

    from fntrain import checkpoint, manifest

    save, seal, unseal = checkpoint.Checkpointer.save, manifest.seal, manifest.unseal
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    def paused_save(self, *args, **kwargs):
        _maybe_pause("save")
        return save(self, *args, **kwargs)

    async def paused_finalize(self, *args, **kwargs):
        if self.get_final().name.isdigit():  # the step directory (items inside it are renamed too)
            _maybe_pause("rename")
        return await finalize(self, *args, **kwargs)

    def paused_seal(directory):
        _maybe_pause("seal")
        return seal(directory)

    def paused_unseal(directory):
        unseal(directory)
        _maybe_pause("prune")

    checkpoint.Checkpointer.save = paused_save
    atomicity.AtomicRenameTemporaryPath.finalize = paused_finalize
    manifest.seal = paused_seal
    manifest.unseal = paused_unseal


if __name__ == "__main__":
    from fntrain import cli

    if PHASE:
        _patch()
    sys.exit(cli.main(sys.argv[1:]))
