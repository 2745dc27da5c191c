"""Your own objective, metrics by name and callbacks, from a YAML config."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn import metrics as sk

import fntrain as ft
from fntrain import builders
from fntrain.experiment import build_experiment, seed_keys

ROOT = Path(__file__).resolve().parent.parent
DIGITS = str(ROOT / "configs/digits_mlp.yaml")

OBJECTIVE = '''
import jax
import jax.numpy as jnp
import fntrain as ft


def l2_penalized(net, l2=0.0):
    """Cross-entropy plus l2 * (sum of squared weights), with both parts as metrics."""

    def loss_fn(params, model_state, batch, key):
        x, y = batch
        logits, model_state = net.apply(params, model_state, x, train=key is not None, key=key)
        ce = ft.losses.softmax_cross_entropy(logits, y)
        penalty = l2 * sum(jnp.sum(w ** 2) for w in jax.tree.leaves(params))
        return ce + penalty, (model_state, {"cross_entropy": ce, "penalty": penalty})

    return loss_fn
'''

CALLBACK = '''
import json


class Recorder:
    def __init__(self, path, fail_at=None):
        self.path, self.fail_at = path, fail_at

    def on_log(self, step, split, metrics):
        if step == self.fail_at:
            raise RuntimeError("disk quota of the experiment tracker")
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, "loss": metrics["loss"]}) + "\\n")


def factory(path, fail_at=None):
    return Recorder(path, fail_at)
'''

RUN = [
    "log.progress=none",
    "model.hidden_sizes=[32]",
    "model.dropout_rate=0.2",
    "loop={kind: steps, num_steps: 25, eval_every_steps: 10}",
    "log.every_steps=1",
    "checkpoint.every_steps=null",
    "optimizer.schedule={name: constant}",
]


@pytest.fixture
def modules(tmp_path, monkeypatch):
    (tmp_path / "l2obj.py").write_text(OBJECTIVE)
    (tmp_path / "recorder.py").write_text(CALLBACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_an_objective_from_yaml_trains_exactly_like_its_loss_fn_by_hand(modules):
    overrides = RUN + ["loss=null", "objective={name: 'l2obj:l2_penalized', kwargs: {l2: 0.001}}", f"output_dir={modules / 'run'}"]
    config = ft.load_config(DIGITS, overrides)
    ft.train(config, stream=io.StringIO())
    lines = [json.loads(line) for line in (modules / "run/metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if line["split"] == "train"]
    val = [line for line in lines if line["split"] == "val"]

    # The same loss_fn driven by hand: the run's keys, data order, optimizer and steps.
    import l2obj

    exp = build_experiment(config)
    keys = seed_keys(config.seed)
    loss_fn = l2obj.l2_penalized(exp.net, l2=0.001)
    optimizer, _ = builders.build_optimizer(config.optimizer, 25)
    ts = ft.TrainState.create(exp.params, exp.model_state, optimizer, key=keys["step"])
    step = ft.make_train_step(loss_fn, optimizer)
    batches = ft.data.BatchIterator(exp.splits.train, 64, key=keys["shuffle"])
    by_hand = []
    for _ in range(25):  # step 20 is the epoch's partial batch of 41 (1257 = 19 * 64 + 41)
        ts, m = step(ts, next(batches))
        by_hand.append({k: float(v) for k, v in m.items()})
    assert [line["step"] for line in train] == list(range(1, 26))
    for line, hand in zip(train, by_hand):
        # The loop gathers each batch on the device, the hand-driven step gets it from the host:
        # the same numbers, compiled as two programs (float32 rounding at most).
        for k in ("loss", "cross_entropy", "penalty"):
            assert line[k] == pytest.approx(hand[k], rel=1e-6), (line["step"], k)
        assert line["loss"] == pytest.approx(line["cross_entropy"] + line["penalty"], rel=1e-6)
    # The objective's metrics are logged for val too; the penalty does not depend on the data.
    assert [line["step"] for line in val] == [10, 20, 25]
    assert all({"loss", "cross_entropy", "penalty"} <= set(line) for line in val)
    assert val[-1]["penalty"] == pytest.approx(0.001 * sum(float((w ** 2).sum()) for w in jax.tree.leaves(ts.params)), rel=1e-5)


def test_metrics_by_name_over_the_val_split_equal_scikit_learn(tmp_path):
    base = [
        "log.progress=none", "loop.num_steps=60", "loop.eval_every_steps=60", "checkpoint.every_steps=null",
        "metrics=[r2, mean_absolute_error, mean_squared_error]",
    ]
    results = {}
    for batch_size in (7, 1000):
        config = ft.load_config(ROOT / "configs/regression_mlp.yaml",
                                base + [f"data.eval_batch_size={batch_size}", f"output_dir={tmp_path / str(batch_size)}"])
        result = ft.train(config, stream=io.StringIO())
        exp = build_experiment(config)
        predictions, _ = exp.net.apply(result.state.params, result.state.model_state, exp.splits.val.x, train=False, key=None)
        y = exp.splits.val.y
        val = result.metrics["val"]
        # float32 predictions; the split's sums are added in float64: 1e-5.
        assert val["r2"] == pytest.approx(sk.r2_score(y, predictions), abs=1e-5)
        assert val["mean_absolute_error"] == pytest.approx(sk.mean_absolute_error(y, predictions), abs=1e-5)
        assert val["mean_squared_error"] == pytest.approx(val["loss"], rel=1e-6)
        results[batch_size] = val
    assert results[7] == pytest.approx(results[1000], rel=1e-5)


def cli(args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "fntrain", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_a_callback_named_in_yaml_works_from_the_cli(modules):
    config = modules / "c.yaml"
    config.write_text(Path(DIGITS).read_text() + "callbacks:\n  - name: 'recorder:factory'\n    kwargs: {path: seen.jsonl}\n")
    done = cli(["train", str(config), *RUN, "loop.num_steps=12", "log.every_steps=5", "output_dir=run"], modules)
    assert done.returncode == 0, done.stderr
    seen = [json.loads(line) for line in (modules / "seen.jsonl").read_text().splitlines()]
    logged = [json.loads(line) for line in (modules / "run/metrics.jsonl").read_text().splitlines()]
    assert seen == [{"step": m["step"], "split": m["split"], "loss": m["loss"]} for m in logged]


def test_a_failing_yaml_callback_exits_2_with_one_line(modules):
    done = cli(["train", DIGITS, *RUN, "output_dir=run", "checkpoint.every_steps=5",
                "callbacks=[{name: 'recorder:factory', kwargs: {path: seen.jsonl, fail_at: 7}}]"], modules)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "callback 'recorder:factory' failed in on_log at step 7: RuntimeError: disk quota" in lines[0]
    assert sorted(p.name for p in (modules / "run/checkpoints").iterdir()) == ["5"]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["objective={name: 'l2obj:l2_penalized'}"], "objective: an objective computes its own loss"),
        (["loss=null", "objective={name: 'l2obj:l2_penalized'}", "metrics=[accuracy]"], "metrics: an objective returns its own metrics"),
        (["metrics=[r3]"], "metrics[0]"),
        (["loss=null", "objective={name: 'l2obj:l2_penalized', kwargs: {l3: 1}}"], "objective.kwargs do not fit"),
        (["callbacks=[{name: 'recorder:factory'}]"], "callbacks[0].kwargs do not fit"),
    ],
)
def test_objective_metrics_and_callbacks_errors_name_the_key(modules, overrides, needle):
    done = cli(["train", DIGITS, *RUN, "output_dir=run", *overrides], modules)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (modules / "run").exists()
