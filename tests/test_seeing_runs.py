"""Seeing runs: TensorBoard event files, learning-curve plots and the table of runs."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fntrain as ft
from fntrain import plot as plot_lib
from fntrain import runs as runs_lib
from fntrain.status import read_status

ROOT = Path(__file__).resolve().parent.parent
DIGITS = str(ROOT / "configs/digits_mlp.yaml")
RUN = [
    "log.progress=none",
    "model.hidden_sizes=[16]",
    "loop={kind: steps, num_steps: 30, eval_every_steps: 10}",
    "log.every_steps=5",
    "checkpoint.every_steps=10",
    "checkpoint.keep=5",
    "optimizer.schedule={name: constant}",
]
CLI_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def train(out, *overrides, **kwargs):
    return ft.train(ft.load_config(DIGITS, RUN + [f"output_dir={out}", *overrides]), stream=io.StringIO(), **kwargs)


def lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's event files, read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict = {}
    for record in lines(run):
        for key, value in record.items():
            if key not in ("step", "split"):
                out.setdefault(f"{record['split']}/{key}", []).append((record["step"], float(np.float32(value))))
    return out


def test_event_files_hold_every_metrics_line_and_a_resumed_run_continues_them(tmp_path):
    train(tmp_path / "whole")
    assert scalars(tmp_path / "whole") == expected_scalars(tmp_path / "whole")  # float32, every line

    # A run killed after step 30 had logged past its step-10 checkpoint; resume from there.
    train(tmp_path / "run")
    for step_dir in (tmp_path / "run/checkpoints").iterdir():
        if int(step_dir.name) > 10:
            shutil.rmtree(step_dir)
    train(tmp_path / "run", resume=True)
    got = scalars(tmp_path / "run")
    assert got == expected_scalars(tmp_path / "run")
    for tag, points in got.items():  # no duplicate or backward steps
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), tag
    assert set(got) >= {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "test/loss", "train/learning_rate"}


def test_event_files_hold_the_config_model_summary_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run/tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert "config/text_summary" in texts and "learning_rate: 0.002" in texts["config/text_summary"]
    assert "dense_1" in texts["model/text_summary"] and "total" in texts["model/text_summary"]
    hparams = EventAccumulator(str(tmp_path / "run/tensorboard/hparams"))
    hparams.Reload()
    assert "_hparams_/experiment" in hparams.summary_metadata  # the HParams dashboard's records
    assert hparams.Scalars("hparams/test/loss")[0].value == pytest.approx(lines(tmp_path / "run")[-1]["loss"], rel=1e-6)


def test_the_plotted_lines_are_the_metrics_and_the_png_decodes(tmp_path):
    from PIL import Image

    train(tmp_path / "a")
    train(tmp_path / "b", "optimizer.learning_rate=1e-4")
    fig = plot_lib.plot_runs([tmp_path / "a", tmp_path / "b"], metrics=["loss", "accuracy"])
    drawn = {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata())) for ax in fig.axes for line in ax.get_lines()}
    for run in ("a", "b"):
        records = lines(tmp_path / run)
        for split in ("train", "val", "test"):
            for metric in ("loss", "accuracy"):
                rows = [r for r in records if r["split"] == split]
                assert drawn[f"{run}|{split}|{metric}"] == ([r["step"] for r in rows], [r[metric] for r in rows])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    path = plot_lib.save_plot(fig, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 380)  # 2 panels of 5 x 3.8 inches at 100 dpi
    # Every finished run draws its own curves.
    with Image.open(tmp_path / "a/curves.png") as image:
        assert image.size[0] >= 500


def test_a_run_in_progress_with_a_cut_off_last_line_is_plotted_as_far_as_it_got(tmp_path):
    train(tmp_path / "run")
    path = tmp_path / "run/metrics.jsonl"
    text = path.read_text().splitlines()
    path.write_text("\n".join(text[:6]) + "\n" + text[6][: len(text[6]) // 2])  # killed mid-write
    (tmp_path / "run/summary.json").unlink()
    warnings = []
    fig = plot_lib.plot_runs([tmp_path / "run"], warn=warnings.append)
    assert len(warnings) == 1 and "line 7 is cut short" in warnings[0]
    steps = [s for line in fig.axes[0].get_lines() if line.get_gid() == "run|train|loss" for s in line.get_xdata()]
    assert steps == [json.loads(t)["step"] for t in text[:6] if '"train"' in t]
    done = subprocess.run([sys.executable, "-m", "fntrain", "plot", str(tmp_path / "run"), "-o", str(tmp_path / "p.png")],
                          env=CLI_ENV, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr.startswith("warning: ") and (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["plot", "{tmp}"], "no metrics.jsonl here"),
        (["plot", "{run}", "--metrics", "loss,acuracy"], "--metrics: no run logged 'acuracy'"),
        (["runs", "{tmp}/empty"], "no runs here"),
        (["runs", "{run}", "--sort", "speed"], "--sort: unknown column 'speed'"),
    ],
)
def test_bad_plot_and_runs_input_is_one_error_line(tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in args]
    done = subprocess.run([sys.executable, "-m", "fntrain", *argv], env=CLI_ENV, capture_output=True, text=True)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def cli(out, *extra):
    """``fntrain train`` in a subprocess whose working directory is ``out``'s parent's parent."""
    args = [sys.executable, "-m", "fntrain", "train", DIGITS, f"output_dir={out}", "log.progress=lines", *extra]
    return subprocess.Popen(args, env=CLI_ENV, cwd=out.parent.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


FAILS = "class Fails:\n    def on_eval(self, step, split, metrics, state):\n        raise ValueError('tracker is down')\n"


def test_runs_shows_finished_interrupted_failed_and_diverged(tmp_path):
    runs = tmp_path / "runs"
    (tmp_path / "cb.py").write_text(FAILS)
    procs = {
        "finished": cli(runs / "finished", "loop.num_epochs=3"),
        "failed": cli(runs / "failed", "loop.num_epochs=3", "callbacks=[{name: 'cb:Fails'}]"),
        "diverged": cli(runs / "diverged", "optimizer.learning_rate=1e6", "optimizer.schedule={name: constant}",
                        "loop={kind: steps, num_steps: 50}", "log.every_steps=5"),
        "interrupted": cli(runs / "interrupted", "loop={kind: steps, num_steps: 5000}", "log.every_steps=10",
                           "model.hidden_sizes=[512, 512]"),
    }
    deadline = time.time() + 120
    while not (runs / "interrupted/metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    procs["interrupted"].send_signal(signal.SIGTERM)
    codes = {name: (p.communicate(timeout=300), p.returncode)[1] for name, p in procs.items()}
    assert codes == {"finished": 0, "failed": 2, "diverged": 3, "interrupted": 143}
    rows = {r["name"]: r for r in runs_lib.table(runs, sort="name")}
    assert {name: r["status"] for name, r in rows.items()} == {n: n for n in procs}
    assert rows["finished"]["steps"] == rows["finished"]["total_steps"] == 60
    assert rows["interrupted"]["total_steps"] == 5000 and 0 < rows["interrupted"]["steps"] < 5000
    assert "tracker is down" in read_status(runs / "failed")["message"]
    best = min((r for r in lines(runs / "finished") if r["split"] == "val"), key=lambda r: r["loss"])
    assert (rows["finished"]["best"], rows["finished"]["best_step"]) == (best["loss"], best["step"])
    done = subprocess.run([sys.executable, "-m", "fntrain", "runs", str(runs)], env=CLI_ENV, capture_output=True, text=True)
    table = done.stdout.splitlines()
    assert done.returncode == 0 and len(table) == 5 and all(s in done.stdout for s in procs)
    as_json = json.loads(subprocess.run([sys.executable, "-m", "fntrain", "runs", str(runs), "--json", "--sort", "steps"],
                                        env=CLI_ENV, capture_output=True, text=True).stdout)
    assert [r["steps"] for r in as_json] == sorted(r["steps"] for r in as_json)


def test_a_killed_run_reads_as_interrupted(tmp_path):
    proc = cli(tmp_path / "run", "loop={kind: steps, num_steps: 5000}", "model.hidden_sizes=[512, 512]")
    deadline = time.time() + 120
    while not (tmp_path / "run/metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert read_status(tmp_path / "run")["status"] == "running"
    proc.kill()
    proc.communicate(timeout=60)
    status = read_status(tmp_path / "run")
    assert status["status"] == "interrupted" and status["killed"]
