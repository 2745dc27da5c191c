"""The run directory's contract under faults: nothing lost, nothing cryptic.

One test family per class of fault (the kills at random moments of a checkpoint write
are in test_resume.py, beside the other process tests):

1. ``--resume`` always continues: no checkpoint yet, timed checkpoints, half-written ones.
2. A damaged newest checkpoint falls back to the previous complete one.
3. ``--resume`` with a changed config is never silent and never misleading.
4. One run per directory at a time.
5. Signals are honoured from the first instant.
6. Every filesystem failure is one line, exit 2, and resumable.
7. Paths: an empty ``output_dir``, another tool's files, symbolic links.
8. Messages are lines of the run, not Python warnings.

Where a fault is followed by ``--resume``, the final ``params.npz`` and ``metrics.jsonl``
must equal those of an uninterrupted run (``reference``), bit for bit.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from fntrain import cli, rundir, storage
from fntrain.cadence import CheckpointTimer
from test_resume import assert_same_run

ROOT = Path(__file__).resolve().parent.parent
DIGITS = str(ROOT / "configs/digits_mlp.yaml")
WORKER = str(ROOT / "tests/fault_worker.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
# 30 quick steps with dropout: lines every 5 steps, val and a checkpoint every 10.
FAST = [
    "log.progress=none",
    "model.hidden_sizes=[16]",
    "model.dropout_rate=0.2",
    "data.batch_size=32",
    "loop.kind=steps",
    "loop.num_steps=30",
    "loop.eval_every_steps=10",
    "optimizer.schedule={name: constant}",
    "log.every_steps=5",
    "checkpoint.every_steps=10",
    "checkpoint.every_minutes=null",
    "checkpoint.keep=5",
]


class Run(NamedTuple):
    rc: int
    stdout: str
    stderr: str


def args(out, *extra) -> list[str]:
    return ["train", DIGITS, f"output_dir={out}", *FAST, *extra]


def run_cli(argv: list[str]) -> Run:
    """``fntrain.cli.main`` in this process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return Run(rc, out.getvalue(), err.getvalue())


def one_error_line(run: Run, *needles: str, rc: int = 2) -> str:
    """The CLI's contract: exit ``rc``, one ``error:`` line on stderr naming ``needles``, no traceback."""
    assert run.rc == rc, run
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def resume_matches(out: Path, reference: Path, *extra: str) -> Run:
    """``--resume`` finishes the run in ``out``, bit-identical to ``reference``."""
    done = run_cli(args(out, "--resume", *extra))
    assert done.rc == 0, done
    assert done.stderr == "", done.stderr
    assert_same_run(reference, out)
    assert not [p for p in out.rglob("*") if ".orbax-checkpoint-tmp" in p.name]
    return done


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run_cli(args(out)).rc == 0
    return out


def copy_run(reference: Path, to: Path) -> Path:
    shutil.copytree(reference, to)
    return to


def start_worker(out: Path, flag: Path, pause: str, *extra: str) -> subprocess.Popen:
    """The CLI in a subprocess that stops at ``pause`` (see fault_worker.py) and creates ``flag``."""
    env = {**ENV, "FNTRAIN_TEST_PAUSE": pause, "FNTRAIN_TEST_FLAG": str(flag)}
    return subprocess.Popen(
        [sys.executable, WORKER, *args(out, *extra)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the worker never reached its pause"
        time.sleep(0.02)


# --------------------------------------------------------------------------- 1. --resume always continues


def test_resume_after_a_kill_before_the_first_checkpoint_starts_afresh(tmp_path, reference):
    out, flag = tmp_path / "run", tmp_path / "flag"
    proc = start_worker(out, flag, "save:1")  # SIGKILL as the first checkpoint begins
    wait_for(flag, proc)
    proc.kill()
    proc.communicate()
    assert (out / "metrics.jsonl").read_text() and not list((out / "checkpoints").iterdir())
    done = resume_matches(out, reference)
    assert [line for line in done.stdout.splitlines() if "starting the run afresh" in line]


def test_timed_checkpoints_change_no_result_and_resume_exactly(tmp_path, reference):
    """``checkpoint.every_minutes`` tiny: a checkpoint after every dispatch, between log lines
    and evaluations; the results are unchanged, and resuming from one mid-window is exact."""
    out = tmp_path / "run"
    timed = ["checkpoint.every_minutes=1e-9", "checkpoint.keep=100"]
    assert run_cli(args(out, *timed)).rc == 0
    assert_same_run(reference, out)
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == list(range(1, 31))
    for step_dir in (out / "checkpoints").iterdir():
        if int(step_dir.name) > 7:  # a crash after step 7: mid log window, between evaluations
            shutil.rmtree(step_dir)
    done = resume_matches(out, reference, *timed)
    assert "(step 7)" in done.stdout


def test_checkpoint_timer_counts_from_the_last_checkpoint():
    now = [0.0]
    timer = CheckpointTimer(2.0, clock=lambda: now[0])
    now[0] = 119.0
    assert not timer.due()
    now[0] = 120.0
    assert timer.due()
    timer.reset()
    assert not timer.due()
    assert not CheckpointTimer(None).due()


# --------------------------------------------------------------------------- 2. damaged checkpoints


def _largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file() and p.name != "fntrain_checksums.json"), key=lambda p: p.stat().st_size)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped-bytes": lambda d: _flip(_largest_file(d)),
    "emptied-meta": lambda d: (d / "meta" / "metadata").write_bytes(b""),
    "missing-file": lambda d: _largest_file(d).unlink(),
    "garbled-checksums": lambda d: (d / "fntrain_checksums.json").write_text("{"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_with_one_line(tmp_path, reference, damage):
    out = copy_run(reference, tmp_path / "run")
    DAMAGE[damage](out / "checkpoints" / "30")
    done = resume_matches(out, reference)
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{out}/checkpoints/30 is damaged" in warnings[0], done.stdout
    assert f"{out}/checkpoints/20 (step 20)" in done.stdout
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 20


def test_unsealed_and_half_written_checkpoints_are_removed_on_the_next_start(tmp_path, reference):
    out = copy_run(reference, tmp_path / "run")
    (out / "checkpoints/30/fntrain_checksums.json").unlink()  # killed between orbax's write and the seal
    shutil.copytree(out / "checkpoints/20", out / "checkpoints/25.orbax-checkpoint-tmp-1234")  # killed mid-write
    done = resume_matches(out, reference)
    removed = [line for line in done.stdout.splitlines() if line.startswith("removed the incomplete checkpoint")]
    assert len(removed) == 2, done.stdout
    assert "(step 20)" in done.stdout


def test_every_checkpoint_damaged_starts_afresh(tmp_path, reference):
    out = copy_run(reference, tmp_path / "run")
    for step_dir in (out / "checkpoints").iterdir():
        _flip(_largest_file(step_dir))
    done = resume_matches(out, reference)
    lines = done.stdout.splitlines()
    assert len([line for line in lines if line.startswith("warning: checkpoint")]) == 3
    assert [line for line in lines if "starting the run afresh" in line]


# --------------------------------------------------------------------------- 3. changed configs


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.dropout_rate=0.1", "model.dropout_rate 0.2 -> 0.1"),
        ("seed=1", "seed 0 -> 1"),
        ("data.val_fraction=0.2", "data.val_fraction 0.15 -> 0.2"),
        ("optimizer.name=sgd", 'optimizer.name "adamw" -> "sgd"'),
        ("data={name: classification, batch_size: 32}", 'data.name "digits" -> "classification"'),
    ],
    ids=["dropout", "seed", "val_fraction", "optimizer", "dataset"],
)
def test_resume_refuses_a_changed_config_naming_each_key(tmp_path, reference, override, needle):
    out = copy_run(reference, tmp_path / "run")
    before = snapshot(out)
    line = one_error_line(run_cli(args(out, "--resume", override)), needle, "--overwrite", "config.yaml")
    assert "checkpoint" not in line.split("changed config")[0]  # not "unreadable checkpoint"
    assert snapshot(out) == before


def test_resume_lists_and_records_the_changes_it_accepts(tmp_path, reference):
    out = tmp_path / "run"
    assert run_cli(args(out, "loop.num_steps=20")).rc == 0
    first = (out / "config.yaml").read_text()
    done = resume_matches(out, reference, "checkpoint.keep=6")
    changed = [line for line in done.stdout.splitlines() if line.startswith("config changed on resume")]
    assert changed == ["config changed on resume: checkpoint.keep 5 -> 6, loop.num_steps 20 -> 30 (recorded in config_history.jsonl)"]
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert history[0]["resumed_at_step"] == 20
    assert history[0]["changes"] == {"checkpoint.keep": [5, 6], "loop.num_steps": [20, 30]}
    assert "num_steps: 20" in first and "num_steps: 30" in (out / "config.yaml").read_text()


# --------------------------------------------------------------------------- 4. one run per directory


def test_a_second_train_in_a_running_runs_directory_exits_at_once(tmp_path, reference):
    out, flag = tmp_path / "run", tmp_path / "flag"
    proc = start_worker(out, flag, "save:2")  # holds the directory, paused at its second checkpoint
    try:
        wait_for(flag, proc)
        before = snapshot(out)
        for extra in ((), ("--overwrite",), ("--resume",)):
            started = time.time()
            one_error_line(run_cli(args(out, *extra)), "is in use by another fntrain run", f"pid {proc.pid}")
            assert time.time() - started < 5, "refused only after building the experiment"
        assert snapshot(out) == before
    finally:
        proc.kill()  # the kernel releases the lock
        proc.communicate()
    resume_matches(out, reference)


# --------------------------------------------------------------------------- 5. signals


def _handler_installed(pid: int, signum: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signum - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
@pytest.mark.parametrize("signum, delay", [(signal.SIGTERM, 0.0), (signal.SIGTERM, 1.0), (signal.SIGINT, 0.0)])
def test_a_signal_during_start_up_stops_cleanly_and_the_run_resumes(tmp_path, reference, signum, delay):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fntrain", *args(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    started = time.time()
    # (SIGTERM's: Python itself catches SIGINT from its first instant, as KeyboardInterrupt)
    while not _handler_installed(proc.pid, signal.SIGTERM) and proc.poll() is None:
        time.sleep(0.001)
    installed_after = time.time() - started
    time.sleep(delay)  # 0: while JAX is still being imported; 1 s: data, model or compilation
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    name = signal.Signals(signum).name
    assert err.splitlines()[-1].startswith(f"error: stopped by {name}") and "--resume" in err.splitlines()[-1], err
    assert installed_after < 5, f"handlers installed only after {installed_after:.1f} s"
    resume_matches(out, reference)


def test_import_fntrain_is_lazy_and_keeps_its_names():
    code = (
        "import sys, fntrain as ft\n"
        "assert 'jax' not in sys.modules, 'import fntrain imported jax'\n"
        "assert ft.train.__module__ == 'fntrain.loop' and ft.TrainState and ft.nn.dense and ft.loop.build_experiment\n"
        "from fntrain import load_config, ConfigError\n"
        "assert sorted(ft.__all__) == ft.__all__ and all(hasattr(ft, n) for n in ft.__all__)\n"
        "import fntrain.malloc; assert fntrain.malloc.status != 'not applied'\n"
    )
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True)


# --------------------------------------------------------------------------- 6. filesystem failures


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class _Fault:
    """Raises ``make_error(path)`` at the ``nth`` write whose file name is ``name``."""

    def __init__(self, name: str, nth: int = 1, make_error=_enospc):
        self.name, self.nth, self.seen, self.make_error = name, nth, 0, make_error

    def hit(self, path) -> bool:
        if Path(path).name == self.name:
            self.seen += 1
            return self.seen == self.nth
        return False


def _inject(monkeypatch, site: str, make_error=_enospc) -> None:
    """Makes the write at ``site`` fail as a full disk would."""
    if site == "lock":

        def pwrite(fd, data, offset):
            raise make_error(".fntrain/lock")

        monkeypatch.setattr(os, "pwrite", pwrite)
        return
    if site == "orbax":
        from orbax.checkpoint import CheckpointManager

        real_save, calls = CheckpointManager.save, []

        def full_disk_save(self, step, *a, **kw):
            calls.append(step)
            if len(calls) < 2:
                return real_save(self, step, *a, **kw)
            tmp = Path(self.directory) / f"{step}.orbax-checkpoint-tmp-99/state.orbax-checkpoint-tmp-99/ocdbt.process_0"
            tmp.mkdir(parents=True)  # what a write cut short leaves
            (tmp / "d").write_bytes(b"\0" * 100)
            code = make_error("").errno  # as TensorStore words it (its status, then the OS error)
            status = {errno.ENOSPC: "RESOURCE_EXHAUSTED", errno.EACCES: "PERMISSION_DENIED"}.get(code, "FAILED_PRECONDITION")
            raise ValueError(
                f'{status}: Error writing "params.dense_1.w/0.0" in OCDBT database at local file "{tmp}/": '
                f'Failed writing: "{tmp}/d": Failed to write 100 bytes to file 14: {os.strerror(code)} '
                f"[os_error_code='{code}']"
            )

        monkeypatch.setattr(CheckpointManager, "save", full_disk_save)
        return
    if site == "metrics":
        real_append, fault = storage.append_line, _Fault("metrics.jsonl", nth=3, make_error=make_error)

        def append_line(path, line):
            if fault.hit(path):
                with open(path, "a") as f:
                    f.write(line[: len(line) // 2])  # a part of the line reached the disk
                raise make_error(path)
            return real_append(path, line)

        monkeypatch.setattr(storage, "append_line", append_line)
        return
    name, nth = {
        "marker": ("run.json", 1),
        "config": ("config.yaml", 1),
        "seal": ("fntrain_checksums.json", 2),
        "params": ("params.npz", 1),
        "summary": ("summary.json", 1),
    }[site]
    real_write, fault = storage.atomic_write, _Fault(name, nth, make_error)

    def atomic_write(path, data):
        if fault.hit(path):
            raise make_error(path)
        return real_write(path, data)

    monkeypatch.setattr(storage, "atomic_write", atomic_write)


WRITE_SITES = ["lock", "marker", "config", "metrics", "orbax", "seal", "params", "summary"]


@pytest.mark.parametrize("site", WRITE_SITES)
def test_disk_full_at_each_write_site_is_one_line_and_resumable(tmp_path, reference, site, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _inject(m, site)
        failed = run_cli(args(out))
    one_error_line(failed, "no space left on the device", "free space", "--resume")
    resume_matches(out, reference)


def test_disk_full_while_resuming_is_one_line_and_resumable(tmp_path, reference, monkeypatch):
    """The resume's own writes (dropping metrics lines past the checkpoint) may fail too."""
    out = copy_run(reference, tmp_path / "run")
    shutil.rmtree(out / "checkpoints/30")
    real_write, fault = storage.atomic_write, _Fault("metrics.jsonl")

    def atomic_write(path, data):
        if fault.hit(path):
            raise _enospc(path)
        return real_write(path, data)

    with monkeypatch.context() as m:
        m.setattr(storage, "atomic_write", atomic_write)
        failed = run_cli(args(out, "--resume"))
    one_error_line(failed, "no space left on the device", "metrics.jsonl")
    resume_matches(out, reference)


@pytest.mark.parametrize(
    "site, code, needle",
    [("orbax", errno.EROFS, "read-only"), ("metrics", errno.EACCES, "permission denied"), ("config", errno.EROFS, "read-only")],
    ids=["orbax-read-only", "metrics-permission-denied", "config-read-only"],
)
def test_unwritable_run_directory_mid_run_is_one_line_and_resumable(tmp_path, reference, monkeypatch, site, code, needle):
    """Root ignores permission bits, so the errors are injected where fntrain and orbax write."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _inject(m, site, make_error=lambda path: OSError(code, os.strerror(code), str(path)))
        failed = run_cli(args(out))
    one_error_line(failed, needle, "output_dir=")
    resume_matches(out, reference)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at ``tmp_path/disk`` (needs root); yields a function that remounts it at a size."""
    disk = tmp_path / "disk"
    disk.mkdir()

    def mount(size: str, *options: str) -> None:
        remount = ["remount"] if os.path.ismount(disk) else []
        opts = ",".join([*remount, f"size={size}", *options])
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(disk)], check=True, capture_output=True)

    try:
        mount("1m")
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC tests cover every write site")
    try:
        yield disk, mount
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow  # a minute of subprocesses; the injected-ENOSPC tests above cover each write site by default
def test_a_really_full_disk_at_several_moments_is_one_line_and_resumable(small_disk, reference):
    """A real full file system: whatever write it cuts (fntrain's, orbax's, TensorStore's), one line
    and exit 2; once space is freed, ``--resume`` finishes bit-identically."""
    disk, mount = small_disk
    needed = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    sizes = [4096, needed // 6, needed // 3, needed // 2, int(needed * 0.8)]
    outcomes = []
    for i, size in enumerate(sizes):
        out = disk / f"run{i}"
        for done in disk.iterdir():  # the earlier run, finished, makes room
            shutil.rmtree(done)
        mount(f"{max(size, 4096)}")
        failed = subprocess.run([sys.executable, "-m", "fntrain", *args(out)], env=ENV, capture_output=True, text=True)
        if failed.returncode != 0:
            one_error_line(Run(failed.returncode, failed.stdout, failed.stderr), "--resume")
        outcomes.append(failed.returncode)
        mount("64m")  # space freed
        resume_matches(out, reference)
    assert outcomes.count(2) >= 4, (outcomes, sizes)


# --------------------------------------------------------------------------- 7. paths


def test_an_empty_output_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(Path(DIGITS).read_text().replace("output_dir: runs/digits_mlp", "output_dir: ''"))
    one_error_line(run_cli(["train", str(config), *FAST]), "output_dir", "got ''")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    one_error_line(run_cli(args(tmp_path / "f")), "is a file")
    one_error_line(run_cli(args(tmp_path / "f" / "run")), "not a directory")
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_another_tools_files_are_never_replaced_or_resumed(tmp_path, flag):
    out = tmp_path / "theirs"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "model.pt").write_text("not fntrain's")
    before = snapshot(out)
    one_error_line(run_cli(args(out, flag)), "fntrain did not write", "checkpoints")
    assert snapshot(out) == before


@pytest.mark.parametrize("flag", [None, "--overwrite", "--resume"])
def test_a_symlinked_checkpoints_dir_is_an_error_and_never_followed(tmp_path, reference, flag):
    out = copy_run(reference, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / "checkpoints", elsewhere)
    (out / "checkpoints").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    one_error_line(run_cli(args(out, *([flag] if flag else []))), "checkpoints", "symbolic link")
    assert snapshot(elsewhere) == before


def test_overwrite_deletes_only_what_fntrain_wrote(tmp_path, reference):
    out = copy_run(reference, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    assert run_cli(args(out, "--overwrite")).rc == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "plots").is_dir()
    assert_same_run(reference, out)


# --------------------------------------------------------------------------- 8. messages, not warnings


def test_a_fallback_is_a_line_of_the_run_not_a_python_warning(tmp_path, reference):
    """In a subprocess with every warning shown: stderr stays empty (no UserWarning with
    fntrain's file paths, no orbax or absl log lines); the warning is a line on stdout."""
    out = copy_run(reference, tmp_path / "run")
    _flip(_largest_file(out / "checkpoints/30"))
    done = subprocess.run(
        [sys.executable, "-W", "always", "-m", "fntrain", *args(out, "--resume")], env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith(f"warning: checkpoint {out}/checkpoints/30")]
    assert_same_run(reference, out)
    assert rundir.is_marked(out)
