"""The training loop: device-resident data, logged gradient norms, accumulation, EMA and reduce_on_plateau."""

import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import fntrain as ft
from fntrain import optim
from fntrain.nn.summary import path_str

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path, name, *overrides):
    config = ft.load_config(
        str(ROOT / "configs/digits_mlp.yaml"),
        ["log.progress=none", "loop.num_epochs=2", "log.every_steps=10", "optimizer.schedule.warmup_steps=5", f"output_dir={tmp_path / name}", *overrides],
    )
    result = ft.train(config, stream=io.StringIO())
    lines = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    return result, lines


@pytest.mark.parametrize("fuse", ["1", "4"])
def test_device_resident_data_trains_exactly_like_host_batches(tmp_path, fuse):
    on, lines_on = run(tmp_path, "on", "data.on_device=true", f"loop.steps_per_dispatch={fuse}")
    off, lines_off = run(tmp_path, "off", "data.on_device=false", f"loop.steps_per_dispatch={fuse}")
    assert lines_on == lines_off  # every logged number, bit for bit
    for a, b in zip(np.asarray(list(on.state.params.values()), dtype=object), np.asarray(list(off.state.params.values()), dtype=object)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_grad_norm_is_logged_at_log_steps(tmp_path):
    _, lines = run(tmp_path, "run", "log.every_steps=15", "log.grad_norm=true")
    train = [line for line in lines if line["split"] == "train"]
    # 1257 training examples in batches of 64: 20 steps an epoch, 40 in all. Logs at 15 and 30
    # carry the norm of that step; the final window (steps 31-40) has no multiple of 15.
    assert [line["step"] for line in train] == [15, 30, 40]
    assert [line["step"] for line in train if "grad_norm" in line] == [15, 30]
    assert all(line["grad_norm"] > 0 for line in train[:2])


def test_accumulated_training_equals_full_batches_with_padded_final_batches(tmp_path):
    """Two epochs of digits (1257 examples: each epoch ends in a batch of 41 real rows and 23
    padding rows) with 4 microbatches per step give the parameters of unaccumulated training."""
    no_dropout = ["model.dropout_rate=0.0", "data.on_device=true"]
    full, lines_full = run(tmp_path, "full", *no_dropout)
    acc, lines_acc = run(tmp_path, "acc", *no_dropout, "optimizer.accumulate_steps=4")
    # float32 sums over 64 rows in another order through 40 AdamW updates: 1e-5 relative.
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(acc.state.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    for a, b in zip(lines_full, lines_acc):
        assert a["split"] == b["split"] and a["step"] == b["step"]
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)


def test_ema_is_evaluated_beside_the_raw_parameters_and_saved_when_chosen(tmp_path, capsys):
    result, lines = run(tmp_path, "ema", "optimizer.ema_decay=0.9", "optimizer.ema_warmup=true")
    splits = [(line["step"], line["split"]) for line in lines if line["split"] != "train"]
    assert splits == [(40, "val"), (40, "val_ema"), (40, "test"), (40, "test_ema")]
    assert result.summary["params"] == "ema" and set(result.metrics) == {"train", "val", "val_ema", "test", "test_ema"}
    ema = optim.ema_params(result.state.opt_state, result.state.params)
    with np.load(tmp_path / "ema" / "params.npz") as saved:
        for path, leaf in jax.tree_util.tree_leaves_with_path(ema):
            np.testing.assert_array_equal(saved["params/" + path_str(path)], np.asarray(leaf))
    assert lines[1]["loss"] != lines[2]["loss"]  # the EMA is evaluated, not the raw parameters twice
    # `fntrain eval` reads params.npz: it reproduces the EMA's metrics.
    from fntrain import cli

    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "ema" / "config.yaml")]) == 0  # the resolved config the run wrote
    evaluated = json.loads(capsys.readouterr().out)
    for split in ("val", "test"):
        for k, v in evaluated[split].items():
            assert v == pytest.approx(result.metrics[f"{split}_ema"][k], abs=1e-6), (split, k)

    raw, _ = run(tmp_path, "raw", "optimizer.ema_decay=0.9", "optimizer.ema_eval=raw")
    assert raw.summary["params"] == "raw"
    with np.load(tmp_path / "raw" / "params.npz") as saved:
        np.testing.assert_array_equal(saved["params/dense_1/w"], np.asarray(raw.state.params["dense_1"]["w"]))


def test_reduce_on_plateau_lowers_the_logged_learning_rate(tmp_path):
    """patience 1 and rtol 1: an improvement would need a loss below 0, so the scale halves at every
    evaluation (each train line is written before its step's evaluation)."""
    _, lines = run(
        tmp_path, "plateau", "optimizer.schedule={name: constant}", "loop.eval_every_epochs=null", "loop.eval_every_steps=10",
        "optimizer.reduce_on_plateau={patience: 1, factor: 0.5, rtol: 1.0}",
    )
    train = [line for line in lines if line["split"] == "train"]
    assert [line["lr_scale"] for line in train] == [1.0, 0.5, 0.25, 0.125]
    np.testing.assert_allclose([line["learning_rate"] for line in train], 2e-3 * np.array([1.0, 0.5, 0.25, 0.125]), rtol=1e-6)
