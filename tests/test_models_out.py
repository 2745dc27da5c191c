"""Getting the model back: load_run and predict, `fntrain predict`, `fntrain export`, and the
public checkpoint API (fntrain/trained.py, prediction.py, exporting.py, checkpoint_api.py).

Two tiny runs (a digits classifier, a regression with standardized targets and an EMA of the
weights) are trained once; the references are independent of fntrain's prediction code: the
metrics the run's own evaluation wrote to summary.json, numpy's argmax, softmax and squared
errors, and a subprocess that never imports fntrain.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import fntrain as ft
from fntrain import cli

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["log.progress=none", "log.plot=false", "log.tensorboard=false", "checkpoint.every_steps=null"]
DIGITS = ["model.hidden_sizes=[16]", "loop={kind: steps, num_steps: 30, eval_every_steps: 30}",
          "optimizer.schedule={name: constant}"]
REGRESSION = ["model.hidden_sizes=[16]", "loop={kind: steps, num_steps: 30, eval_every_steps: 30}",
              "data.num_examples=400", "data.standardize_targets=true", "optimizer.ema_decay=0.9"]


def _train(config: str, out: Path, overrides: list[str]) -> Path:
    ft.train(ft.load_config(ROOT / config, [*QUIET, *overrides, f"output_dir={out}"]), stream=io.StringIO())
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return _train("configs/digits_mlp.yaml", tmp_path_factory.mktemp("runs") / "digits", DIGITS)


@pytest.fixture(scope="module")
def regression(tmp_path_factory) -> Path:
    return _train("configs/regression_mlp.yaml", tmp_path_factory.mktemp("runs") / "regression", REGRESSION)


def _test_metrics(run: ft.TrainedRun) -> dict:
    """The test metrics of the parameters params.npz holds, as the run's evaluation wrote them."""
    return run.summary["final"]["test" if run.summary["params"] == "raw" else "test_ema"]


def test_predict_reproduces_the_runs_test_accuracy_and_loss(digits):
    run = ft.load_run(digits)
    test = ft.data.load_splits(run.config).test
    logits = run.predict(test.x).astype(np.float64)
    assert logits.shape == (len(test.y), 10) and run.head == "classes"
    expected = _test_metrics(run)
    # Accuracy is a count over the split: exact. Cross-entropy by hand in float64 against the
    # loop's float32 batches summed in float64: float32 rounding, well under 1e-6 relative.
    assert np.mean(logits.argmax(-1) == test.y) == pytest.approx(expected["accuracy"], abs=1e-6)
    z = logits - logits.max(-1, keepdims=True)
    nll = np.log(np.exp(z).sum(-1)) - z[np.arange(len(z)), test.y]
    assert nll.mean() == pytest.approx(expected["loss"], rel=1e-6)


def test_predict_gives_regression_outputs_in_the_targets_units(regression):
    run = ft.load_run(regression)
    splits = ft.data.load_splits(run.config)
    assert run.summary["params"] == "ema" and run.head == "outputs"
    # The constants are the training targets' mean and std (independent: numpy on the split).
    scale = run.model_state["target_scale"]
    np.testing.assert_allclose(np.asarray(scale["mean"]), splits.train.y.mean(0), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(np.asarray(scale["std"]) - 1) > 0.05)  # far from standardized: units matter
    pred = run.predict(splits.test.x).astype(np.float64)
    mse = np.mean((pred - splits.test.y) ** 2)
    assert mse == pytest.approx(_test_metrics(run)["loss"], rel=1e-6)  # float32 outputs, float64 sums


def test_a_run_loads_and_predicts_after_its_data_file_is_gone(tmp_path):
    """summary.json records what sizes the network, so a run moved to another machine
    without its data still loads; standardized targets come back in their units."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 2)) * 30 + 100).astype(np.float32)
    data = tmp_path / "table.npz"
    np.savez(data, x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    out = _train("configs/regression_mlp.yaml", tmp_path / "run", [
        *REGRESSION[:2], f"data={{name: npz, path: {data}, val_fraction: 0.2, standardize_targets: true}}"])
    before = ft.load_run(out).predict(x[80:])
    data.unlink()
    run = ft.load_run(out)
    assert run.summary["network"] == {"input_shape": [5], "input_dtype": "float32", "num_outputs": 2, "target_shape": [2]}
    np.testing.assert_array_equal(run.predict(x[80:]), before)
    mse = np.mean((before.astype(np.float64) - y[80:]) ** 2)
    assert mse == pytest.approx(_test_metrics(run)["loss"], rel=1e-6)


def test_predict_takes_any_number_of_rows_and_compiles_once(digits):
    run = ft.load_run(digits)
    x = ft.data.load_splits(run.config).test.x[:40]
    whole = run.predict(x, batch_size=40)
    for n in (0, 1, 6, 7, 8, 15, 40):
        part = run.predict(x[:n], batch_size=7)
        assert part.shape == (n, 10) and part.dtype == np.float32
        np.testing.assert_allclose(part, whole[:n], rtol=1e-6, atol=1e-6)  # batch of 7 vs 40: float32 reordering
    assert run._apply._cache_size() == 2  # batches of 40, then every size padded to 7
    with pytest.raises(ft.ConfigError, match=r"expected rows of shape \(8, 8, 1\) \(64 values each\), got \(64,\)"):
        run.predict(x.reshape(40, 64))
    with pytest.raises(ft.ConfigError, match="batch_size"):
        run.predict(x, batch_size=0)


def _predict_cli(run_dir, *args) -> int:
    return cli.main(["predict", str(run_dir), *map(str, args)])


def test_predict_cli_writes_the_same_outputs_for_npz_npy_and_csv(digits, tmp_path, capsys):
    run = ft.load_run(digits)
    x = ft.data.load_splits(run.config).test.x[:50]
    expected = run.predict(x)
    np.savez(tmp_path / "in.npz", x=x)
    np.savez(tmp_path / "other.npz", images=x)  # the only array: picked without --key
    np.save(tmp_path / "in.npy", x)
    header = ",".join(f"pixel{i}" for i in range(64))  # a header row, detected as fntrain.data does
    np.savetxt(tmp_path / "in.csv", x.reshape(50, 64), delimiter=",", header=header, comments="")  # %.18e: exact
    for name, extra in [("in.npz", []), ("other.npz", []), ("in.npz", ["--key", "x"]), ("in.npy", []),
                        ("in.csv", ["--batch-size", "7"])]:
        out = tmp_path / f"{name}.preds.npz"
        assert _predict_cli(digits, "--input", tmp_path / name, "--output", out, *extra) == 0, name
        with np.load(out, allow_pickle=False) as f:
            assert sorted(f.files) == ["classes", "outputs", "probabilities"]
            atol = 1e-6 if extra[:1] == ["--batch-size"] else 0  # same batches: bit for bit; other batches: float32
            np.testing.assert_allclose(f["outputs"], expected, rtol=0, atol=atol, err_msg=name)
            np.testing.assert_array_equal(f["classes"], f["outputs"].argmax(-1))
            np.testing.assert_allclose(f["probabilities"].sum(-1), 1.0, atol=1e-6)  # float32 softmax
            np.testing.assert_allclose(f["probabilities"], jax.nn.softmax(f["outputs"]), atol=1e-6)
    assert "wrote" in capsys.readouterr().out


def test_predict_cli_regression_writes_outputs_only(regression, tmp_path):
    run = ft.load_run(regression)
    x = ft.data.load_splits(run.config).test.x
    np.save(tmp_path / "x.npy", x)
    assert _predict_cli(regression, "--input", tmp_path / "x.npy", "--output", tmp_path / "p.npz") == 0
    with np.load(tmp_path / "p.npz", allow_pickle=False) as f:
        assert f.files == ["outputs"]
        np.testing.assert_array_equal(f["outputs"], run.predict(x))


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_predict_cli_bad_inputs_exit_2_with_one_line(digits, tmp_path, capsys):
    x = ft.data.load_splits(str(digits / "config.yaml")).test.x[:5]
    np.save(tmp_path / "flat63.npy", x.reshape(5, 64)[:, :63])
    np.savetxt(tmp_path / "short.csv", x.reshape(5, 64)[:, :63], delimiter=",")
    np.savez(tmp_path / "two.npz", a=x, b=x)
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out = ["--output", tmp_path / "p.npz"]
    cases = [
        (["--input", tmp_path / "flat63.npy"], "expected rows of shape (8, 8, 1) (64 values each), got (63,)"),
        (["--input", tmp_path / "short.csv"], "short.csv: expected rows of shape (8, 8, 1) (64 values each), got (63,)"),
        (["--input", tmp_path / "two.npz"], "no array 'x'; it holds ['a', 'b']"),
        (["--input", tmp_path / "two.npz", "--key", "c"], "no array 'c'"),
        (["--input", tmp_path / "missing.npy"], "file not found"),
        (["--input", tmp_path / "pickled.npy"], "not pickled"),
    ]
    for args, message in cases:
        assert _predict_cli(digits, *args, *out) == 2, args
        assert message in _one_error(capsys), args
    assert _predict_cli(tmp_path / "nowhere", "--input", tmp_path / "two.npz", *out) == 2
    assert "does not exist" in _one_error(capsys)
    assert not (tmp_path / "p.npz").exists()


def test_load_run_refuses_what_is_not_a_finished_run(digits, tmp_path):
    with pytest.raises(ft.ConfigError, match="does not exist"):
        ft.load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ft.ConfigError, match="is not an fntrain run: it has no config.yaml"):
        ft.load_run(tmp_path / "empty")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.yaml").write_text((digits / "config.yaml").read_text())
    with pytest.raises(ft.ConfigError, match="has no params.npz"):
        ft.load_run(copy)
    data = (digits / "params.npz").read_bytes()
    (copy / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ft.ConfigError, match="params.npz' is damaged"):
        ft.load_run(copy)
    (copy / "params.npz").write_bytes(data)
    config = (copy / "config.yaml").read_text()
    assert "- 16\n" in config
    (copy / "config.yaml").write_text(config.replace("- 16\n", "- 17\n"))
    with pytest.raises(ft.ConfigError, match=r"parameter 'params/dense_1/b' has shape \(16,\) but the model expects \(17,\)"):
        ft.load_run(copy)


CLEAN_CALL = """
import json, sys
import jax, numpy as np
results = {}
for name in sys.argv[1:]:
    exp = jax.export.deserialize(open(name + ".jaxexport", "rb").read())
    x = np.load(name + ".x.npy", allow_pickle=False)
    np.save(name + ".y.npy", np.asarray(exp.call(x)))
    results[name] = list(exp.platforms)
print(json.dumps({"platforms": results, "fntrain": "fntrain" in sys.modules}))
"""


def test_exported_model_runs_with_jax_alone(digits, regression, tmp_path):
    # digits through the CLI, regression (standardized targets, EMA parameters) through export_run.
    assert cli.main(["export", str(digits), "-o", str(tmp_path / "digits.jaxexport")]) == 0
    done = ft.export_run(regression, tmp_path / "regression.jaxexport")
    assert "cpu" in done.platforms and str(done.input.shape[0]) == "b" and done.input.shape[1:] == (8,)
    expected = {}
    for name, run_dir in (("digits", digits), ("regression", regression)):
        run = ft.load_run(run_dir)
        x = ft.data.load_splits(run.config).test.x[:13]  # 13 rows: no training or evaluation batch size
        np.save(tmp_path / f"{name}.x.npy", x)
        expected[name] = run.predict(x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-I", "-c", CLEAN_CALL, "digits", "regression"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["fntrain"] is False
    for name in expected:
        assert report["platforms"][name] == ["cpu", "cuda"]  # lowered for cuda too, from a CPU-only machine
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.y.npy"), expected[name], rtol=1e-6, atol=1e-6)


def test_export_falls_back_to_the_current_platform_and_says_why(digits, tmp_path, capsys, monkeypatch):
    real = jax.export.export

    def no_cuda(fn, *, platforms=None, **kwargs):
        if "cuda" in (platforms or ()):
            raise NotImplementedError("no cuda lowering for this kernel\nmore detail")
        return real(fn, platforms=platforms, **kwargs)

    monkeypatch.setattr(jax.export, "export", no_cuda)
    assert cli.main(["export", str(digits), "-o", str(tmp_path / "m.jaxexport")]) == 0
    captured = capsys.readouterr()
    assert "platforms cpu" in captured.out
    assert captured.err == ("warning: lowering for cuda failed: no cuda lowering for this kernel; exported for cpu "
                            "only\n")
    exp = jax.export.deserialize((tmp_path / "m.jaxexport").read_bytes())
    assert exp.platforms == ("cpu",)


def test_cli_help_lists_predict_and_export(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "predict" in text and "export" in text


# --------------------------------------------------------------------------- checkpoints


def _trained_state(width: int = 8, steps: int = 3, key=None) -> ft.TrainState:
    """A TrainState after a few Adam steps: params, batch-norm statistics and moments all non-trivial."""
    net = ft.nn.named_serial(("dense_0", ft.nn.dense(width)), ("norm", ft.nn.batch_norm()), ("relu", ft.nn.relu),
                             ("dense_1", ft.nn.dense(3)))
    x = jax.random.normal(jax.random.key(0), (16, 5))
    y = jax.numpy.arange(16) % 3
    params, state = net.init(jax.random.key(1), x)
    opt = optax.adam(1e-2)
    ts = ft.TrainState.create(params, state, opt, key=jax.random.key(7) if key is None else key)
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy), opt)
    for _ in range(steps):
        ts, _ = step(ts, (x, y))
    return ts


def _raw_key(ts: ft.TrainState) -> ft.TrainState:
    typed = jax.dtypes.issubdtype(ts.key.dtype, jax.dtypes.prng_key)
    return ts._replace(key=jax.random.key_data(ts.key) if typed else ts.key)


def _assert_bit_equal(a: ft.TrainState, b: ft.TrainState) -> None:
    """Same tree, and every leaf (the key as its raw data) equal bit for bit, dtype included."""
    raw = _raw_key
    la, lb = jax.tree_util.tree_leaves_with_path(raw(a)), jax.tree.leaves(raw(b))
    assert len(la) == len(lb) and jax.tree.structure(raw(a)) == jax.tree.structure(raw(b))
    for (path, x), y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


def test_checkpoint_round_trips_a_train_state_bit_for_bit(tmp_path):
    ts = _trained_state()
    later = _trained_state(steps=5)
    assert int(ts.step) == 3 and int(later.step) == 5
    ft.save_checkpoint(tmp_path / "ckpt", ts, step=3, extra={"epoch": 1, "note": "first", "best": [0.5, 2]})
    ft.save_checkpoint(tmp_path / "ckpt", later, step=5, extra={"epoch": 2})
    like = _trained_state(steps=0, key=jax.random.key(99))  # fresh: other values, same structure
    restored, extra = ft.restore_checkpoint(tmp_path / "ckpt", like)  # the latest step
    assert extra == {"epoch": 2} and jax.random.key_impl(restored.key) == jax.random.key_impl(like.key)
    _assert_bit_equal(restored, later)
    restored, extra = ft.restore_checkpoint(tmp_path / "ckpt", like, step=3)
    assert extra == {"epoch": 1, "note": "first", "best": [0.5, 2]}
    _assert_bit_equal(restored, ts)
    raw = ts._replace(key=jax.random.key_data(ts.key))  # a raw uint32 key round-trips as one
    ft.save_checkpoint(tmp_path / "raw", raw, step=0)
    _assert_bit_equal(ft.restore_checkpoint(tmp_path / "raw", like._replace(key=raw.key))[0], raw)


def test_checkpoint_refusals_name_the_problem(tmp_path):
    ts = _trained_state()
    ft.save_checkpoint(tmp_path / "ckpt", ts, step=3)
    wider = _trained_state(width=9, steps=0)
    with pytest.raises(ft.ConfigError, match=r"^params/dense_0/b: checkpoint has \(8,\) float32, `like` has \(9,\) float32"):
        ft.restore_checkpoint(tmp_path / "ckpt", wider)
    with pytest.raises(ft.ConfigError, match=r"has steps \[3\]"):
        ft.restore_checkpoint(tmp_path / "ckpt", ts, step=4)
    with pytest.raises(ft.ConfigError, match="already holds a complete checkpoint of step 3"):
        ft.save_checkpoint(tmp_path / "ckpt", ts, step=3)
    with pytest.raises(ft.ConfigError, match="JSON-able"):
        ft.save_checkpoint(tmp_path / "ckpt", ts, step=4, extra={"a": object()})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ft.ConfigError, match="holds no complete checkpoint"):
        ft.restore_checkpoint(tmp_path / "empty", ts)
    state_files = sorted(p for p in (tmp_path / "ckpt" / "3").rglob("*") if p.is_file() and "state" in p.parts)
    target = max(state_files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ft.ConfigError, match=r"is damaged \(.*SHA-256 mismatch\)"):
        ft.restore_checkpoint(tmp_path / "ckpt", ts)
