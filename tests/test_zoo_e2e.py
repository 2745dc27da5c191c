"""The model zoo through the config and CLI: char-LM beats its baseline, gradcheck, layer stats."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import fntrain as ft
from fntrain import data as data_lib

ROOT = Path(__file__).resolve().parent.parent


def test_charlm_transformer_beats_the_unigram_baseline(tmp_path):
    # A shortened configs/charlm_transformer.yaml: fewer characters, a smaller model, 150 steps.
    overrides = [
        f"output_dir={tmp_path}", "log.progress=none", "data.max_chars=60000", "data.seq_len=32", "data.stride=32",
        "model.d_model=64", "model.num_layers=1", "model.mlp_dim=128", "loop.num_steps=150",
        "loop.eval_every_steps=150", "optimizer.schedule.warmup_steps=20", "loop.steps_per_dispatch=5",
    ]
    result = ft.train(ft.load_config(ROOT / "configs/charlm_transformer.yaml", overrides), stream=io.StringIO())
    splits, vocab = data_lib.load_char_lm(seq_len=32, stride=32, max_chars=60000)
    baseline = data_lib.unigram_baseline(splits, vocab_size=len(vocab))
    val_loss = result.metrics["val"]["loss"]
    # The unigram model is ~3.2 nats/char here; 150 steps of a 1-layer transformer reach ~2.4.
    assert val_loss < baseline - 0.5, (val_loss, baseline)


def test_gradcheck_command_passes_a_correct_model():
    done = subprocess.run(
        [sys.executable, "-m", "fntrain", "gradcheck", str(ROOT / "configs/digits_cnn.yaml"), "--examples", "2"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("passed: 12 parameters")
    rows = [line.split() for line in done.stdout.splitlines()[1:-1]]
    assert {r[0] for r in rows} >= {"conv2d_0/w", "batch_norm_1/scale", "dense_12/b"}
    assert all(float(r[-2]) < 1e-6 and r[-1] == "ok" for r in rows)


BROKEN = '''
import jax
import fntrain as ft

@jax.custom_vjp
def scale(x, s):
    return x * s

def fwd(x, s):
    return x * s, (x, s)

def bwd(res, g):
    x, s = res
    return g * s, 2.0 * jax.numpy.sum(g * x, axis=0)   # twice the true ds

scale.defvjp(fwd, bwd)

def broken(num_outputs):
    def init(key, x):
        return {"s": jax.numpy.ones(x.shape[-1])}, {}
    def apply(params, state, x, *, train=False, key=None):
        return scale(x, params["s"]), state
    return ft.nn.serial(ft.nn.flatten, ft.nn.dense(8), ft.nn.Module(init, apply, "scale"), ft.nn.dense(num_outputs))
'''


def test_gradcheck_command_names_a_wrong_gradient(tmp_path):
    (tmp_path / "broken_model.py").write_text(BROKEN)
    done = subprocess.run(
        [sys.executable, "-m", "fntrain", "gradcheck", str(ROOT / "configs/digits_mlp.yaml"),
         "model={name: 'broken_model:broken'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    failing = [line.split()[0] for line in done.stdout.splitlines() if line.endswith("FAIL")]
    assert failing == ["scale_2/s"]


def test_layer_stats_are_logged_only_when_asked(tmp_path):
    def run(out, *extra):
        overrides = [f"output_dir={out}", "log.progress=none", "loop.kind=steps", "loop.num_steps=10",
                     "log.every_steps=5", "log.grad_norm=true", "optimizer.schedule={name: constant}", *extra]
        ft.train(ft.load_config(ROOT / "configs/digits_mlp.yaml", overrides), stream=io.StringIO())
        return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines() if '"train"' in l]

    with_stats = run(tmp_path / "on", "log.layer_stats=true")
    without = run(tmp_path / "off")
    keys = set(with_stats[-1])
    for layer in ("dense_1", "dense_4", "dense_7"):
        assert {f"layers/{layer}/grad_norm", f"layers/{layer}/act_std"} <= keys
    assert "layers/relu_2/grad_output_norm" in keys and "layers/relu_2/grad_norm" not in keys
    assert all(np.isfinite(v) for k, v in with_stats[-1].items() if k.startswith("layers/"))
    assert not any(k.startswith("layers/") for k in without[-1])
    # Logging the stats changes nothing about training.
    for a, b in zip(with_stats, without):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"]
