"""Callbacks: the exact calls on a known run, their values, and a callback that fails."""

import io
import json
from pathlib import Path

import numpy as np
import pytest

import fntrain as ft

ROOT = Path(__file__).resolve().parent.parent
DIGITS = str(ROOT / "configs/digits_mlp.yaml")
# 12 steps: train lines at 5, 10, 12; val at 6, 12; checkpoints at 10 and the end; test at the end.
RUN = [
    "log.progress=none",
    "model.hidden_sizes=[16]",
    "loop={kind: steps, num_steps: 12, eval_every_steps: 6}",
    "log.every_steps=5",
    "checkpoint.every_steps=10",
    "optimizer.schedule={name: constant}",
]


def train(out, *overrides, **kwargs):
    config = ft.load_config(DIGITS, RUN + [f"output_dir={out}", *overrides])
    return ft.train(config, stream=io.StringIO(), **kwargs)


class Recorder:
    def __init__(self):
        self.calls, self.logged, self.evaluated = [], [], []

    def on_train_start(self, run):
        self.calls.append(("on_train_start", run.start_step, None))
        self.run = run

    def on_log(self, step, split, metrics):
        self.calls.append(("on_log", step, split))
        self.logged.append({"step": step, "split": split, **metrics})

    def on_eval(self, step, split, metrics, state):
        self.calls.append(("on_eval", step, split))
        self.evaluated.append((split, metrics, state))

    def on_checkpoint(self, step, path):
        self.calls.append(("on_checkpoint", step, Path(path).name))

    def on_train_end(self, result):
        self.calls.append(("on_train_end", result.summary["steps"], None))


def test_the_exact_sequence_of_calls_and_their_values(tmp_path):
    rec = Recorder()
    result = train(tmp_path / "run", callbacks=[rec])
    assert rec.calls == [
        ("on_train_start", 0, None),
        ("on_log", 5, "train"),
        ("on_log", 6, "val"), ("on_eval", 6, "val"),
        ("on_log", 10, "train"), ("on_checkpoint", 10, "10"),
        ("on_log", 12, "train"), ("on_log", 12, "val"), ("on_eval", 12, "val"), ("on_checkpoint", 12, "12"),
        ("on_log", 12, "test"), ("on_eval", 12, "test"),
        ("on_train_end", 12, None),
    ]
    # on_log gets exactly the lines of metrics.jsonl.
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rec.logged == lines
    # The run as built: its config, network, splits and length.
    assert rec.run.total_steps == 12 and rec.run.output_dir == str(tmp_path / "run")
    assert rec.run.splits.val.num_examples == 270 and rec.run.net.name == "serial"
    # on_eval's state is the one evaluated: evaluating it again gives the same metrics.
    split, metrics, state = rec.evaluated[-1]
    again = ft.evaluate(ft.experiment.build_experiment(result_config(tmp_path)).loss_fn, state.params,
                        state.model_state, rec.run.splits.test, batch_size=256)
    assert split == "test" and again == pytest.approx(metrics, rel=1e-6)
    assert result.metrics["test"] == metrics


def result_config(tmp_path):
    return ft.load_config(DIGITS, RUN + [f"output_dir={tmp_path / 'run'}"])


def test_callbacks_are_called_in_order_and_may_have_any_subset_of_methods(tmp_path):
    order = []

    class OnlyEnd:
        def __init__(self, name):
            self.name = name

        def on_train_end(self, result):
            order.append(self.name)

    train(tmp_path / "run", callbacks=[OnlyEnd("a"), object(), OnlyEnd("b")])
    assert order == ["a", "b"]


class FailsAtFinalEval:
    def on_eval(self, step, split, metrics, state):
        if step == 12:
            raise ValueError("the validation looked wrong\nsecond line")


def test_a_failing_callback_names_itself_and_the_run_resumes_exactly(tmp_path):
    train(tmp_path / "whole")
    with pytest.raises(ft.CallbackError) as info:
        train(tmp_path / "failed", callbacks=[FailsAtFinalEval()])
    message = str(info.value)
    assert "\n" not in message
    assert "callback 'FailsAtFinalEval' failed in on_eval at step 12: ValueError: the validation looked wrong" in message
    assert sorted(p.name for p in (tmp_path / "failed/checkpoints").iterdir()) == ["10"]
    result = train(tmp_path / "failed", resume=True)
    assert result.summary["resumed_from_step"] == 10
    for name in ("metrics.jsonl",):
        assert (tmp_path / "failed" / name).read_text() == (tmp_path / "whole" / name).read_text()
    with np.load(tmp_path / "whole/params.npz") as a, np.load(tmp_path / "failed/params.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
