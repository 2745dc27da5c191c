"""Populations (fntrain/population/): each member is its single run; resume, refusals, early stopping, summary."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fntrain as ft
from fntrain.errors import ConfigError
from fntrain.rundir import flatten_tree

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "configs/digits_mlp.yaml")
CNN = str(ROOT / "configs/digits_cnn.yaml")
QUIET = ["log.progress=none", "log.plot=false", "log.tensorboard=false"]
# Tiny runs with dropout and shuffling on; two evaluations, log lines every 5 steps.
SHORT = ["loop.kind=steps", "loop.num_steps=20", "loop.eval_every_steps=10", "log.every_steps=5", "checkpoint.every_steps=null"]
MLP_ARGS = [*QUIET, *SHORT, "model.hidden_sizes=[32]", "model.dropout_rate=0.2", "optimizer.schedule.warmup_steps=5"]
# Without batch norm: a conv bias followed by batch norm has a zero gradient up to float noise, which
# Adam scales to full-size steps, so those biases (and the running means after them) follow summation
# order rather than the data; in a single run as much as in a member.
CNN_ARGS = [*QUIET, *SHORT, "loop.num_steps=10", "model.channels=[4]", "model.hidden_sizes=[8]", "model.norm=null"]


def lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train(config_path, out, overrides, **kwargs):
    config = ft.load_config(config_path, [f"output_dir={out}", *overrides])
    return ft.train(config, stream=io.StringIO(), overwrite=True, **kwargs)


def member_lines(run: Path, m: int) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "member"} for r in lines(run) if r["member"] == m]


def assert_member_is_its_run(pop: Path, m: int, single: Path):
    """Same lines, same keys; every number within 1e-4 relative (float32, summation order under vmap)."""
    mine, theirs = member_lines(pop, m), lines(single)
    assert [(r["step"], r["split"]) for r in mine] == [(r["step"], r["split"]) for r in theirs]
    for a, b in zip(mine, theirs):
        assert a.keys() == b.keys()
        for k, v in b.items():
            if isinstance(v, float):
                assert a[k] == pytest.approx(v, rel=1e-4, abs=1e-7), (m, a["step"], a["split"], k)
    with np.load(pop / "members" / f"params_{m}.npz") as p, np.load(single / "params.npz") as q:
        assert sorted(p.files) == sorted(q.files)
        for name in q.files:
            np.testing.assert_allclose(p[name], q[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _members(summary: dict) -> list[dict]:
    return summary["population"]["members"]


@pytest.fixture(scope="module")
def mlp_population(tmp_path_factory):
    """2 seeds x 2 learning rates of the digits MLP, with dropout."""
    out = tmp_path_factory.mktemp("mlp_pop")
    result = train(MLP, out, [*MLP_ARGS, "population.size=2", "population.grid={optimizer.learning_rate: [1e-3, 3e-3]}"])
    return out, result


def test_every_mlp_member_reproduces_its_single_run(mlp_population, tmp_path):
    out, result = mlp_population
    members = _members(result.summary)
    assert [(m["seed"], m["values"]["optimizer.learning_rate"]) for m in members] == [
        (0, 1e-3), (1, 1e-3), (0, 3e-3), (1, 3e-3)
    ]
    for m in members:
        single = tmp_path / f"single_{m['member']}"
        train(MLP, single, [*MLP_ARGS, *m["overrides"].split()])
        assert_member_is_its_run(out, m["member"], single)


def test_every_cnn_member_reproduces_its_single_run(tmp_path):
    """Convolutions under vmap, and dropout rates as data."""
    out = tmp_path / "pop"
    result = train(CNN, out, [*CNN_ARGS, "population.size=2", "population.grid={model.dropout_rate: [0.1, 0.3]}"])
    members = _members(result.summary)
    assert [(m["seed"], m["values"]["model.dropout_rate"]) for m in members] == [(0, 0.1), (1, 0.1), (0, 0.3), (1, 0.3)]
    for m in [members[0], members[3]]:  # two of the four single runs (2 CPU cores): both seeds, both rates
        single = tmp_path / f"single_{m['member']}"
        train(CNN, single, [*CNN_ARGS, *m["overrides"].split()])
        assert_member_is_its_run(out, m["member"], single)


def test_weight_decay_and_label_smoothing_vary_as_data(tmp_path):
    out = tmp_path / "pop"
    grid = "population.grid={optimizer.weight_decay: [0, 0.05], loss.label_smoothing: [0.0, 0.1]}"
    result = train(MLP, out, [*MLP_ARGS, "loop.num_steps=10", grid])
    members = _members(result.summary)
    pairs = [(m["values"]["optimizer.weight_decay"], m["values"]["loss.label_smoothing"]) for m in members]
    assert sorted(pairs) == [(0.0, 0.0), (0.0, 0.1), (0.05, 0.0), (0.05, 0.1)]
    members = sorted(members, key=lambda m: (m["values"]["optimizer.weight_decay"], m["values"]["loss.label_smoothing"]))
    for m in [members[0], members[3]]:  # the single runs without either term, and with both
        single = tmp_path / f"single_{m['member']}"
        train(MLP, single, [*MLP_ARGS, "loop.num_steps=10", *m["overrides"].split()])
        assert_member_is_its_run(out, m["member"], single)


def test_summary_ranks_members_and_averages_over_seeds(mlp_population):
    """Against a hand computation from metrics.jsonl: each member's last val line."""
    out, result = mlp_population
    summary = json.loads((out / "summary.json").read_text())
    last_val = {}
    for r in lines(out):
        if r["split"] == "val":
            last_val[r["member"]] = r
    order = sorted(last_val, key=lambda m: last_val[m]["loss"])
    assert summary["population"]["ranking"] == order
    assert summary["population"]["best_member"] == order[0]
    for point in summary["population"]["grid"]:
        for name in ("loss", "accuracy"):
            xs = np.array([last_val[m][name] for m in point["members"]])
            assert point["final"]["val"][name]["mean"] == pytest.approx(xs.mean(), rel=1e-12)
            assert point["final"]["val"][name]["std"] == pytest.approx(xs.std(), rel=1e-9, abs=1e-15)
    lr_of = {m["member"]: m["values"]["optimizer.learning_rate"] for m in _members(summary)}
    assert [sorted(lr_of[m] for m in p["members"]) for p in summary["population"]["grid"]] == [[1e-3, 1e-3], [3e-3, 3e-3]]
    # params.npz is the best member's, so single-run tools keep working.
    with np.load(out / "params.npz") as p, np.load(out / "members" / f"params_{order[0]}.npz") as q:
        for name in p.files:
            np.testing.assert_array_equal(p[name], q[name])


def test_load_run_picks_a_member_or_the_best(mlp_population):
    out, _ = mlp_population
    summary = json.loads((out / "summary.json").read_text())
    x = ft.data.load_splits(ft.load_config(out / "config.yaml")).test.x[:9]
    best = ft.load_run(out)
    for m in range(4):
        run = ft.load_run(out, member=m)
        loaded = {**flatten_tree(run.params, "params"), **flatten_tree(run.model_state, "model_state")}
        with np.load(out / "members" / f"params_{m}.npz") as saved:
            assert sorted(saved.files) == sorted(loaded)
            for name in saved.files:
                np.testing.assert_array_equal(loaded[name], saved[name])
        if m == summary["population"]["best_member"]:
            np.testing.assert_array_equal(run.predict(x), best.predict(x))
        else:
            assert not np.array_equal(run.predict(x), best.predict(x))
    with pytest.raises(ft.ConfigError, match="member: 4 is not a member .* members 0..3"):
        ft.load_run(out, member=4)


def test_a_dropout_grid_mixing_zero_and_positive_rates_is_refused():
    """Rate 0 builds no dropout layers, so the layers (and their keys) would differ between members."""
    with pytest.raises(ConfigError, match=r"population\.grid: 'model\.dropout_rate': a rate of 0"):
        ft.load_config(MLP, ["population.grid={model.dropout_rate: [0.0, 0.2]}"])


@pytest.mark.parametrize("key, values", [
    ("model.hidden_sizes", "[[8], [16]]"), ("data.batch_size", "[32, 64]"), ("optimizer.name", "[adam, sgd]"),
])
def test_a_grid_over_a_shape_or_code_key_is_a_config_error_naming_it(key, values):
    with pytest.raises(ConfigError, match=rf"population\.grid: '{key}' cannot vary within a population"):
        ft.load_config(MLP, [f"population.grid={{{key}: {values}}}"])


def test_the_cli_refuses_a_shape_changing_grid_with_exit_2_and_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fntrain", "train", MLP, f"output_dir={tmp_path / 'r'}",
         "population.grid={model.hidden_sizes: [[8], [16]]}"],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    assert "'model.hidden_sizes'" in done.stderr and not (tmp_path / "r").exists()


def test_a_stopped_member_keeps_its_parameters_while_the_others_train(tmp_path):
    """lr 1e-5 improves val loss by about 0.003 in 10 steps, lr 3e-3 by 0.2: with min_delta 0.01 member 0
    stops at step 20, member 1 runs on."""
    es = ["early_stopping.patience=1", "early_stopping.min_delta=0.01", "early_stopping.restore_best=false"]
    base = [*MLP_ARGS, "loop.num_steps=50", "optimizer.schedule={name: constant}", *es]
    out = tmp_path / "pop"
    result = train(MLP, out, [*base, "population.grid={optimizer.learning_rate: [1e-5, 3e-3]}"])
    members = _members(result.summary)
    assert members[0]["stopped_early_at"] == 20 and members[1]["stopped_early_at"] is None
    assert max(r["step"] for r in lines(out) if r["member"] == 0) == 20
    assert max(r["step"] for r in lines(out) if r["member"] == 1) == 50
    # Member 0's final parameters are those of its single run stopped at step 20 (its 30 masked updates changed nothing).
    single = tmp_path / "single"
    train(MLP, single, [*base, "optimizer.learning_rate=1e-5", "loop.num_steps=20"])
    with np.load(out / "members/params_0.npz") as p, np.load(single / "params.npz") as q:
        for name in q.files:
            np.testing.assert_allclose(p[name], q[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_the_run_ends_when_every_member_has_stopped(tmp_path):
    es = ["early_stopping.patience=1", "early_stopping.min_delta=100.0"]
    result = train(MLP, tmp_path / "pop", [*MLP_ARGS, "loop.num_steps=50", *es, "population.size=2"])
    assert result.summary["steps"] == 20 and result.summary["stopped_early"]
    assert [m["stopped_early_at"] for m in _members(result.summary)] == [20, 20]


def test_members_split_over_two_devices_train_as_on_one(mlp_population, tmp_path):
    """Two simulated CPU devices, two members each: the same lines as the one-device population
    (1e-5 relative: the per-device programs batch fewer members, so XLA may sum in another order)."""
    out, _ = mlp_population
    overrides = [*MLP_ARGS, "population.size=2", "population.grid={optimizer.learning_rate: [1e-3, 3e-3]}", "parallel.num_devices=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, str(ROOT / "tests/population_worker.py"), MLP, str(tmp_path / "two"), *overrides],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads(done.stdout.strip().splitlines()[-1])) == 2  # summary.json's devices
    one, two = lines(out), lines(tmp_path / "two")
    assert [(r["step"], r["split"], r["member"]) for r in one] == [(r["step"], r["split"], r["member"]) for r in two]
    for a, b in zip(one, two):
        for k, v in a.items():
            if isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-7), (a["step"], a["split"], a["member"], k)


def test_a_device_count_that_does_not_divide_the_members_is_refused(monkeypatch):
    import jax

    from fntrain.population import placement

    config = ft.load_config(MLP, ["population.size=3", "parallel.num_devices=2"])
    with pytest.raises(ConfigError, match=r"parallel.num_devices is 2 but only 1 devices are visible"):
        placement.member_placement(config, 3)
    device = jax.devices()[0]
    monkeypatch.setattr(placement.jax, "devices", lambda: [device, device])
    with pytest.raises(ConfigError, match=r"parallel.num_devices \(2\) must divide the population's 3 members"):
        placement.member_placement(config, 3)
    monkeypatch.undo()
    # null: every device when they divide the members, else one.
    assert placement.member_placement(ft.load_config(MLP, ["population.size=3"]), 3).num_devices == 1


# --------------------------------------------------------------------------- exact resume after SIGTERM

CLI_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
CLI_ARGS = [
    "log.progress=lines", "log.plot=false", "log.tensorboard=false", "log.every_steps=10",
    "checkpoint.every_steps=50", "loop.kind=steps", "loop.num_steps=200", "loop.eval_every_steps=100",
    "model.hidden_sizes=[128,128]", "data.batch_size=128", "population.size=2",
    "population.grid={optimizer.learning_rate: [1e-3, 2e-3]}",
]


def cli(out, *extra):
    return [sys.executable, "-m", "fntrain", "train", MLP, f"output_dir={out}", *CLI_ARGS, *extra]


def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_population(tmp_path):
    whole = tmp_path / "whole"
    train(MLP, whole, CLI_ARGS)  # in this process: what the command line trains, without another start-up
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(out), env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    step = int(err.strip().splitlines()[-1].split("at step ")[1].split(";")[0])
    assert 0 < step < 200
    said = io.StringIO()  # resumed in this process: the command line's --resume is this call
    ft.train(ft.load_config(MLP, [f"output_dir={out}", *CLI_ARGS]), resume=True, stream=said)
    assert f"resumed from {out / 'checkpoints'}/{step} (step {step})" in said.getvalue()
    assert (whole / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
    for name in ["params.npz", "members/params_0.npz", "members/params_1.npz"]:
        with np.load(whole / name) as a, np.load(out / name) as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


def test_plot_draws_each_member_as_a_run(mlp_population):
    from fntrain.plot import plot_runs

    out, _ = mlp_population
    fig = plot_runs([out])
    gids = {line.get_gid() for ax in fig.axes for line in ax.get_lines()}
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    assert {f"{out.name} member {m}|val|loss" for m in range(4)} <= gids


def test_tensorboard_shows_each_member_under_its_own_tag(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "pop"
    train(MLP, out, [*MLP_ARGS, "loop.num_steps=10", "log.tensorboard=true", "population.size=2"])
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    for m in (0, 1):
        expected = [(r["step"], np.float32(r["loss"])) for r in lines(out) if r["member"] == m and r["split"] == "train"]
        assert [(e.step, np.float32(e.value)) for e in acc.Scalars(f"member_{m}/train/loss")] == expected
    assert not any(tag.endswith("/member") for tag in acc.Tags()["scalars"])
