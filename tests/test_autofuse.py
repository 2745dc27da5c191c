"""loop.steps_per_dispatch: auto: the timed choice, and results bit-identical to single steps."""

import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import fntrain as ft
from fntrain import autofuse
from fntrain import loop as loop_lib
from fntrain.dispatch import dispatches
from fntrain.autofuse import AutoFusion, fused_size, worth_trying

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("log_every, k", [(50, 10), (200, 10), (16, 16), (100, 10), (7, 7), (1, 1), (34, 2), (48, 16)])
def test_fused_size_is_the_largest_divisor_up_to_16(log_every, k):
    assert fused_size(log_every) == k


def test_worth_trying_needs_a_short_step_and_a_long_run():
    assert worth_trying(0.004, 0.5, 5000)  # 20 s left, 20 compilations of 0.5 s = 10 s
    assert not worth_trying(0.004, 0.5, 1000)  # 4 s left
    assert not worth_trying(0.15, 0.5, 100_000)  # a CNN's step: the host's share is negligible


def feed(fusion, windows):
    """Reports log windows ``(steps, seconds, steps_left)``; returns the sizes after each."""
    sizes = []
    for w in windows:
        fusion.window_done(*w)
        sizes.append(fusion.size)
    return sizes


def test_choice_single_then_trial_then_fused_when_faster():
    fusion = AutoFusion(10)
    fusion.compiled(1, 0.4)
    # Window 1 compiles; window 2 times single steps (4 ms); the fused program compiles in
    # window 3, which is not timed; window 4 is (3 ms a step), so fused dispatches are kept.
    assert feed(fusion, [(200, 1.2, 9000), (200, 0.8, 8800)]) == [1, 10]
    fusion.compiled(10, 0.6)
    assert feed(fusion, [(200, 1.4, 8600), (200, 0.6, 8400), (200, 0.1, 8200)]) == [10, 10, 10]
    assert fusion.summary() == {"chosen": 10, "tried": 10, "single_step_ms": 4.0, "fused_step_ms": 3.0}


def test_choice_reverts_when_the_fused_step_is_slower():
    fusion = AutoFusion(10)
    fusion.compiled(1, 0.4)
    assert feed(fusion, [(200, 1.2, 9000), (200, 0.8, 8800), (200, 0.8, 8600)]) == [1, 10, 10]  # no fused dispatch yet
    fusion.compiled(10, 0.6)
    assert feed(fusion, [(200, 1.4, 8400), (200, 1.0, 8200), (200, 0.1, 8000)]) == [10, 1, 1]
    assert fusion.summary()["chosen"] == 1 and fusion.summary()["fused_step_ms"] == 5.0


def test_choice_is_a_function_of_the_timings_alone():
    timings = [(200, 1.2, 9000), (200, 0.8, 8800), (200, 1.2, 8600)]
    a, b = AutoFusion(10), AutoFusion(10)
    assert feed(a, timings) == feed(b, timings)
    assert AutoFusion(1).size == 1 and feed(AutoFusion(1), timings) == [1, 1, 1]


def run(tmp_path, name, *overrides):
    """Digits MLP, 4 epochs of 20 steps, logs every 10 (K=10), evaluates every 25 steps: fused
    dispatches, dispatches cut short by an evaluation (run as single steps) and epoch ends."""
    config = ft.load_config(
        str(ROOT / "configs/digits_mlp.yaml"),
        ["log.progress=none", "loop.num_epochs=4", "log.every_steps=10", "loop.eval_every_steps=25",
         "optimizer.schedule.warmup_steps=5", "data.on_device=true", f"output_dir={tmp_path / name}", *overrides],
    )
    result = ft.train(config, stream=io.StringIO())
    lines = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    return result, lines, summary


@pytest.mark.parametrize("keep", [np.inf, 0.0], ids=["kept", "reverted"])
def test_auto_is_bit_identical_to_single_steps(tmp_path, monkeypatch, keep):
    single, lines_single, summary_single = run(tmp_path, "single", "loop.steps_per_dispatch=1")
    assert summary_single["steps_per_dispatch"] == 1
    monkeypatch.setattr(autofuse, "PAYBACK", 0.0)  # try fusing even in this short run
    monkeypatch.setattr(autofuse, "KEEP_FACTOR", keep)
    sizes = []

    def noting(*args, **kwargs):
        for d in dispatches(*args, **kwargs):
            sizes.append(d.steps if d.fused else 1)
            yield d

    monkeypatch.setattr(loop_lib, "dispatches", noting)
    auto, lines_auto, summary_auto = run(tmp_path, "auto")
    chosen = summary_auto["steps_per_dispatch"]
    assert chosen["tried"] == 10 and chosen["chosen"] == (10 if keep else 1)
    # Steps 1-20 time single steps; the choice applies from the dispatch after the one prepared
    # at step 20: 21-30 are cut short by the evaluation at 25 (single steps), 31-40 compile the
    # fused program, 41-50 time it, and 51-60 was prepared before the choice at 50.
    assert sizes == [1] * 30 + ([10] * 4 + [1] * 10 if keep else [10] * 3 + [1] * 20)
    assert lines_auto == lines_single  # every logged number, bit for bit
    raw = lambda ts: jax.tree.leaves(ts._replace(key=jax.random.key_data(ts.key)))  # noqa: E731
    for a, b in zip(raw(single.state), raw(auto.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_auto_is_single_steps_for_host_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(autofuse, "PAYBACK", 0.0)
    _, _, summary = run(tmp_path, "host", "data.on_device=false")
    assert summary["steps_per_dispatch"] == 1
