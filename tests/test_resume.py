"""Checkpoints: exact resume, kills, SIGTERM, damaged checkpoints, divergence, early stopping."""

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fntrain as ft

ROOT = Path(__file__).resolve().parent.parent
DIGITS = str(ROOT / "configs/digits_mlp.yaml")
# Small and quick, with dropout and shuffling on; checkpoints fall between log lines.
BASE = [
    "log.progress=none",
    "model.hidden_sizes=[32]",
    "model.dropout_rate=0.2",
    "log.every_steps=10",
    "checkpoint.every_steps=15",
    "checkpoint.keep=20",
]
LOOPS = {
    "steps": ["loop.kind=steps", "loop.num_steps=80", "loop.eval_every_steps=20"],
    "epochs": ["loop.kind=epochs", "loop.num_epochs=4", "loop.eval_every_epochs=1"],  # 20 steps per epoch
}


def train(out, overrides, **kwargs):
    config = ft.load_config(DIGITS, BASE + [f"output_dir={out}", *overrides])
    return ft.train(config, stream=io.StringIO(), **kwargs)


def assert_same_run(a: Path, b: Path):
    """Bit-identical final parameters and identical metrics.jsonl."""
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    with np.load(a / "params.npz") as pa, np.load(b / "params.npz") as pb:
        assert sorted(pa.files) == sorted(pb.files)
        for name in pa.files:
            np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


@pytest.mark.parametrize("kind", sorted(LOOPS))
def test_stop_and_resume_is_bit_identical(tmp_path, kind):
    """2N steps in one go == N steps, stopped, then resumed for N more (constant LR so N is a full run)."""
    loop = LOOPS[kind] + ["optimizer.schedule={name: constant}"]
    train(tmp_path / "whole", loop)
    half = [o.replace("num_steps=80", "num_steps=40").replace("num_epochs=4", "num_epochs=2") for o in loop]
    train(tmp_path / "halves", half)
    train(tmp_path / "halves", loop, resume=True)
    assert_same_run(tmp_path / "whole", tmp_path / "halves")


@pytest.mark.parametrize("kind", sorted(LOOPS))
def test_resume_from_a_checkpoint_between_log_lines(tmp_path, kind):
    """A crash after the step-45 checkpoint: the unfinished log window is restored too."""
    loop = LOOPS[kind]  # the config's warmup-cosine schedule
    train(tmp_path / "whole", loop)
    train(tmp_path / "crashed", loop)
    for step_dir in (tmp_path / "crashed/checkpoints").iterdir():
        if int(step_dir.name) > 45:
            shutil.rmtree(step_dir)
    result = train(tmp_path / "crashed", loop, resume=True)
    assert result.summary["resumed_from_step"] == 45
    assert_same_run(tmp_path / "whole", tmp_path / "crashed")


RECIPES = [
    "optimizer.ema_decay=0.95",
    "optimizer.ema_warmup=true",
    "optimizer.accumulate_steps=4",
    "optimizer.reduce_on_plateau={patience: 1, factor: 0.5, rtol: 0.2}",
    "optimizer.groups=[{match: '^dense_1/', learning_rate_scale: 0.5}, {match: '^dense_4/b$', frozen: true}]",
]


def test_stop_and_resume_with_ema_plateau_groups_and_accumulation_is_bit_identical(tmp_path):
    """The EMA, the plateau scale and the groups' states live in the optimizer state, so a run
    stopped at step 40 and resumed matches the uninterrupted one bit for bit (params.npz holds
    the EMA)."""
    loop = LOOPS["steps"] + ["optimizer.schedule={name: constant}", *RECIPES]
    whole = train(tmp_path / "whole", loop)
    train(tmp_path / "halves", [o.replace("num_steps=80", "num_steps=40") for o in loop])
    resumed = train(tmp_path / "halves", loop, resume=True)
    assert resumed.summary["resumed_from_step"] == 40 and resumed.summary["params"] == "ema"
    scales = [json.loads(line).get("lr_scale") for line in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    assert len({s for s in scales if s is not None}) > 1  # the plateau scale changed during the run
    assert_same_run(tmp_path / "whole", tmp_path / "halves")
    assert whole.summary["final"] == resumed.summary["final"]


def test_incompatible_checkpoint_names_the_parameter(tmp_path):
    train(tmp_path, ["loop.kind=steps", "loop.num_steps=15", "optimizer.schedule={name: constant}"])
    changed = ["loop.kind=steps", "loop.num_steps=30", "model.hidden_sizes=[48]", "optimizer.schedule={name: constant}"]
    # The run's config.yaml says first what changed ...
    with pytest.raises(ft.ConfigError, match=r"changed config: model.hidden_sizes \[32\] -> \[48\];"):
        train(tmp_path, changed, resume=True)
    # ... and where it was edited to match, the checkpoint itself names the parameter.
    config = ft.load_config(DIGITS, BASE + [f"output_dir={tmp_path}", *changed])
    (tmp_path / "config.yaml").write_text(ft.config.dump_config(config))
    with pytest.raises(ft.ConfigError, match=r"parameter .dense_1/b. has shape \(32,\) but .* expects \(48,\)"):
        train(tmp_path, changed, resume=True)


def test_damaged_checkpoint_is_skipped_with_a_warning(tmp_path):
    loop = ["loop.kind=steps", "loop.num_steps=60", "optimizer.schedule={name: constant}"]
    train(tmp_path / "whole", loop)
    train(tmp_path / "run", loop)
    ckpts = tmp_path / "run/checkpoints"
    shutil.rmtree(ckpts / "60")
    # Step 45's arrays are damaged after the fact; an interrupted write is left beside it.
    for f in (ckpts / "45").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "meta" not in f.parts:
            f.write_bytes(b"\0" * 7)
    (ckpts / "55.orbax-checkpoint-tmp-1234").mkdir()
    config = ft.load_config(DIGITS, BASE + [f"output_dir={tmp_path / 'run'}", *loop])
    stream = io.StringIO()
    result = ft.train(config, resume=True, stream=stream)
    assert result.summary["resumed_from_step"] == 30
    lines = stream.getvalue().splitlines()
    assert [l for l in lines if l.startswith("warning: checkpoint") and l.split()[2].endswith("checkpoints/45")], lines
    assert any("55.orbax-checkpoint-tmp-1234" in l and l.startswith("removed the incomplete") for l in lines), lines
    assert_same_run(tmp_path / "whole", tmp_path / "run")


def test_skip_nonfinite_updates_are_counted(tmp_path):
    """A loss that is NaN (with NaN gradients) on the one batch holding a marked example:
    NaN data is refused before training, so the loss makes the non-finite updates."""
    module = tmp_path / "nan_loss.py"
    module.write_text(
        "import jax.numpy as jnp\n"
        "import numpy as np\n"
        "import fntrain\n"
        "def make():\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.normal(size=(40, 3)).astype(np.float32)\n"
        "    y = (x[:, 0] > 0).astype(np.int32)\n"
        "    y[7] = 2  # the marked example\n"
        "    return x, y\n"
        "def loss(logits, labels, weights=None):\n"
        "    real = jnp.ones(labels.shape, bool) if weights is None else weights > 0\n"
        "    marked = jnp.any((labels == 2) & real)\n"
        "    value = fntrain.losses.softmax_cross_entropy(logits, labels, weights=weights)\n"
        "    return value * jnp.where(marked, jnp.nan, 1.0)  # NaN loss and NaN gradients\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        overrides = [
            "data={name: 'nan_loss:make', val_fraction: 0.0, test_fraction: 0.0, batch_size: 8}",
            "loss={name: 'nan_loss:loss'}",
            "loop.kind=epochs",
            "loop.num_epochs=5",
            "loop.on_nonfinite=skip",
            "log.every_steps=5",
            "optimizer.schedule={name: constant}",
        ]
        result = train(tmp_path / "run", overrides)
    finally:
        sys.path.remove(str(tmp_path))
    # The marked example lands in exactly one of the 5 batches of each epoch.
    assert result.summary["nonfinite_steps"] == 5
    assert all(np.isfinite(np.asarray(p)).all() for p in __import__("jax").tree.leaves(result.state.params))


def test_early_stopping_keeps_the_best_parameters(tmp_path):
    overrides = [
        "loop.kind=epochs",
        "loop.num_epochs=40",
        "early_stopping.patience=2",
        "early_stopping.metric=loss",
        "optimizer.learning_rate=0.02",  # overfits quickly, so val loss turns up
        "optimizer.schedule={name: constant}",
        "model.dropout_rate=0.0",
        "model.hidden_sizes=[256]",
        "loop.eval_every_epochs=1",
    ]
    result = train(tmp_path, overrides)
    s = result.summary
    assert s["stopped_early"] and s["steps"] < 40 * 20
    val = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["split"] == "val"]
    best = min(val, key=lambda r: r["loss"])
    assert s["best"]["step"] == best["step"] and s["best"]["val"]["loss"] == best["loss"]
    assert s["final"]["val"] == s["best"]["val"]
    # Two evaluations after the best, none better: that is what patience 2 means.
    assert [r["step"] for r in val][-3] == best["step"]
    # The returned parameters are the best ones: evaluating them reproduces the best val loss.
    exp = ft.loop.build_experiment(ft.load_config(DIGITS, BASE + [f"output_dir={tmp_path}", *overrides]))
    metrics = ft.evaluate(exp.loss_fn, result.state.params, result.state.model_state, exp.splits.val, batch_size=256)
    np.testing.assert_allclose(metrics["loss"], best["loss"], rtol=1e-6)


# --------------------------------------------------------------------------- processes

CLI_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
# Slow enough per step that signals land mid-run; checkpoints every 10 steps.
CLI_ARGS = [
    "log.progress=lines",
    "log.every_steps=10",
    "checkpoint.every_steps=10",
    "loop.kind=steps",
    "loop.num_steps=400",
    "model.hidden_sizes=[512,512]",
    "data.batch_size=256",
    "model.dropout_rate=0.2",
]


def cli(out, *extra):
    return [sys.executable, "-m", "fntrain", "train", DIGITS, f"output_dir={out}", *CLI_ARGS, *extra]


def wait_for_training(proc, out: Path, timeout=60):
    """Blocks until the run has logged a line (so compilation is over)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = out / "metrics.jsonl"
        if path.exists() and path.read_text().strip():
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(cli(out), env=CLI_ENV, check=True, capture_output=True)
    return out


def test_sigterm_checkpoints_the_current_step_and_resume_finishes_exactly(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(out), env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_training(proc, out)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM, documented in fntrain/cli.py
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: stopped by SIGTERM at step ") and "--resume" in line
    step = int(line.split("at step ")[1].split(";")[0])
    assert 0 < step < 400 and (out / "checkpoints" / str(step)).is_dir()
    done = subprocess.run(cli(out, "--resume"), env=CLI_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"(step {step})" in done.stdout
    assert_same_run(uninterrupted, out)


WORKER = str(ROOT / "tests/fault_worker.py")
PHASES = ("save", "rename", "seal", "prune")  # the moments of a checkpoint write, see fault_worker.py


def test_sigkill_at_ten_random_moments_always_resumes_and_matches(tmp_path, uninterrupted):
    """Ten SIGKILLs, seeded: the first as the first checkpoint begins (nothing to resume
    from), then each moment of a checkpoint write twice (tensors written but not renamed,
    renamed but not sealed, an old one half-deleted, a write just begun), and random times.
    Each --resume cleans up, continues, and the run ends bit-identical."""
    out, flag = tmp_path / "run", tmp_path / "paused"
    rng = random.Random(0)
    plan = [("save", 1)] + rng.sample([(p, rng.randint(1, 3)) for p in PHASES * 2] + [("time", 0)], 9)
    for phase, nth in plan:
        flag.unlink(missing_ok=True)
        env = {**CLI_ENV, "FNTRAIN_TEST_PAUSE": f"{phase}:{nth}" if phase != "time" else "", "FNTRAIN_TEST_FLAG": str(flag)}
        args = [sys.executable, WORKER, *cli(out, "--resume")[3:]]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        if phase == "time":
            time.sleep(rng.uniform(2.0, 6.0))
        while phase != "time" and not flag.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"{phase}:{nth}: {proc.communicate()[1]}"
        proc.kill()
        proc.communicate()
    done = subprocess.run([sys.executable, WORKER, *cli(out, "--resume")[3:]], env=CLI_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_run(uninterrupted, out)
    leftovers = [p for p in (out / "checkpoints").iterdir() if not (p / "fntrain_checksums.json").is_file()]
    assert not leftovers, leftovers


def test_divergence_stops_with_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "fntrain", "train", DIGITS, f"output_dir={out}", "log.progress=none",
        "optimizer.learning_rate=1e6", "optimizer.schedule={name: constant}", "checkpoint.every_steps=1",
        "log.every_steps=5", "loop.kind=steps", "loop.num_steps=50",
    ]
    done = subprocess.run(args, env=CLI_ENV, capture_output=True, text=True)
    assert done.returncode == 3
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "NaN/inf between steps" in err[0] and "last good checkpoint" in err[0]
    last = int(err[0].split("(step ")[1].split(")")[0])
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir())[-1] == last
    # The kept checkpoint restores, and its parameters are finite.
    config = ft.load_config(DIGITS, [f"output_dir={out}"])
    exp = ft.loop.build_experiment(config)
    optimizer = ft.builders.build_optimizer(config.optimizer, 600)[0]
    like = ft.TrainState.create(exp.params, exp.model_state, optimizer, key=exp.keys["step"])
    restored, meta = ft.checkpoint.Checkpointer(out, 3).restore_latest(like)
    assert meta["step"] == last
    assert all(np.isfinite(np.asarray(p)).all() for p in __import__("jax").tree.leaves(restored.params))
