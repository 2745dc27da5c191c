"""The training loop's device-resident data: the same batches as the host path, bit for bit."""

import io
import json
from pathlib import Path

import numpy as np
import pytest

import fntrain as ft

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
