"""XLA:CPU's convolution kernel chosen per shape by timing, kept per machine, forced by FNTRAIN_CONV."""

import io
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fntrain import tuning
from fntrain.nn import conv_choice
from fntrain.nn.layers import conv2d_nhwc

ROOT = Path(__file__).resolve().parents[1]
X, W = jax.ShapeDtypeStruct((2, 6, 6, 3), jnp.float32), jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
KEY = conv_choice.shape_key(X.shape, W.shape, X.dtype, W.dtype, (1, 1), "SAME")


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """FNTRAIN_CONV unset, an empty cache in tmp_path and no choices remembered in memory."""
    monkeypatch.delenv("FNTRAIN_CONV", raising=False)
    monkeypatch.setenv("FNTRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(conv_choice, "_chosen", {})
    monkeypatch.setattr(conv_choice, "_seen", [])
    return tmp_path


def given_timings(monkeypatch, ms: dict):
    """Makes the candidates "measure" ``ms`` (milliseconds) and records which were timed."""
    timed = []

    def seconds(kernel, x, w, strides, padding):
        name = next(n for n, k in conv_choice.KERNELS.items() if k is kernel)
        timed.append(name)
        return ms[name] / 1e3

    monkeypatch.setattr(conv_choice, "_seconds", seconds)
    return timed


def convolutions_in_cpu_program(strides=(1, 1)) -> int:
    """How many convolutions the CPU program of conv2d_nhwc's gradient has, for X and W."""
    f = jax.grad(lambda x, w: jnp.sum(conv2d_nhwc(x, w, strides, "SAME")), argnums=(0, 1))
    return len(re.findall(r"convolution\(", jax.jit(f).lower(X, W).compile().as_text()))


def test_the_faster_candidate_is_chosen_stored_and_read_back_without_timing(auto, monkeypatch):
    timed = given_timings(monkeypatch, {"im2col": 5.0, "xla": 1.0})
    assert convolutions_in_cpu_program() > 0  # XLA's kernel was chosen: the program convolves
    assert sorted(timed) == ["im2col", "xla"]
    assert conv_choice.choices() == {KEY: {"kernel": "xla", "source": "timed", "ms": {"im2col": 5.0, "xla": 1.0}}}
    stored = json.loads((auto / "conv_kernels.json").read_text())
    assert stored == {tuning.machine(): {KEY: {"kernel": "xla", "ms": {"im2col": 5.0, "xla": 1.0}}}}

    # A new process (nothing in memory) reads the cache and times nothing.
    monkeypatch.setattr(conv_choice, "_chosen", {})
    timed.clear()
    assert convolutions_in_cpu_program() > 0
    assert timed == []
    assert conv_choice.choices()[KEY]["source"] == "cached"


def test_im2col_is_kept_unless_xla_is_faster_by_the_margin(auto, monkeypatch):
    given_timings(monkeypatch, {"im2col": 5.0, "xla": 5.0 / conv_choice.MARGIN + 0.01})
    assert convolutions_in_cpu_program() == 0  # im2col: matmuls only
    assert conv_choice.choices()[KEY]["kernel"] == "im2col"


def test_the_environment_forces_a_kernel_without_timing(auto, monkeypatch):
    timed = given_timings(monkeypatch, {"im2col": 1.0, "xla": 9.0})
    monkeypatch.setenv("FNTRAIN_CONV", "xla")
    assert convolutions_in_cpu_program() > 0
    monkeypatch.setenv("FNTRAIN_CONV", "im2col")
    assert convolutions_in_cpu_program(strides=(2, 2)) == 0
    assert timed == [] and not (auto / "conv_kernels.json").exists()
    assert {v["source"] for v in conv_choice.choices().values()} == {"forced"}
    # Back to auto: the forced choice is not taken for a measured one.
    monkeypatch.setenv("FNTRAIN_CONV", "auto")
    assert convolutions_in_cpu_program() == 0 and sorted(timed) == ["im2col", "xla"]


def test_an_unknown_value_warns_and_times(auto, monkeypatch):
    timed = given_timings(monkeypatch, {"im2col": 1.0, "xla": 9.0})
    monkeypatch.setenv("FNTRAIN_CONV", "winograd")
    with pytest.warns(UserWarning, match="FNTRAIN_CONV='winograd' is not one of"):
        convolutions_in_cpu_program()
    assert sorted(timed) == ["im2col", "xla"]


def test_another_machines_answer_is_not_used(auto, monkeypatch):
    (auto / "conv_kernels.json").write_text(json.dumps({"some other CPU; 64 cores": {KEY: {"kernel": "xla"}}}))
    timed = given_timings(monkeypatch, {"im2col": 1.0, "xla": 9.0})
    assert convolutions_in_cpu_program() == 0
    assert sorted(timed) == ["im2col", "xla"]
    stored = json.loads((auto / "conv_kernels.json").read_text())
    assert set(stored) == {"some other CPU; 64 cores", tuning.machine()}  # the other machine's kept


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"m": 3})])
def test_a_broken_cache_file_is_timed_over(auto, monkeypatch, content):
    (auto / "conv_kernels.json").write_text(content)
    timed = given_timings(monkeypatch, {"im2col": 1.0, "xla": 9.0})
    assert convolutions_in_cpu_program() == 0 and len(timed) == 2
    assert tuning.lookup("conv_kernels", KEY) == {"kernel": "im2col", "ms": {"im2col": 1.0, "xla": 9.0}}


def test_an_unwritable_cache_still_chooses(auto, monkeypatch):
    blocker = auto / "file"
    blocker.write_text("")
    monkeypatch.setenv("FNTRAIN_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot be made
    given_timings(monkeypatch, {"im2col": 5.0, "xla": 1.0})
    assert convolutions_in_cpu_program() > 0
    assert tuning.store("conv_kernels", "k", 1) is False


def test_nothing_is_timed_where_the_cpu_branch_does_not_run(auto, monkeypatch):
    timed = given_timings(monkeypatch, {"im2col": 5.0, "xla": 1.0})
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert convolutions_in_cpu_program() == 0  # the default, im2col
    assert timed == [] and conv_choice.choices() == {}


def test_real_timing_gives_positive_times_and_the_same_numbers(auto):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(X.shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(W.shape), jnp.float32)
    got = jax.jit(lambda x, w: conv2d_nhwc(x, w, (1, 1), "SAME"))(x, w)  # timed while tracing
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    choice = conv_choice.choices()[KEY]
    assert choice["source"] == "timed" and choice["kernel"] in ("im2col", "xla")
    assert set(choice["ms"]) == {"im2col", "xla"} and all(0 < v < 1000 for v in choice["ms"].values())  # finite ms


def test_a_training_run_reports_its_kernels_in_the_summary(auto, monkeypatch, tmp_path):
    import fntrain as ft

    timed = given_timings(monkeypatch, {"im2col": 5.0, "xla": 1.0})
    config = ft.load_config(str(ROOT / "configs/digits_cnn.yaml"), [
        f"output_dir={tmp_path / 'run'}", "loop={kind: steps, num_steps: 4}", "log={every_steps: 2, progress: none}",
        "model.channels=[4, 8]", "model.hidden_sizes=[16]", "data.batch_size=16",
    ])
    ft.train(config, stream=io.StringIO())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # The images are [16, 8, 8, 1] and the CNN's second block sees them pooled to 4x4: the
    # training batch's two shapes are among those traced (with evaluation's and initialisation's).
    kernels = summary["conv_kernels"]
    assert {
        conv_choice.shape_key((16, 8, 8, 1), (3, 3, 1, 4), "float32", "float32", (1, 1), "SAME"),
        conv_choice.shape_key((16, 4, 4, 4), (3, 3, 4, 8), "float32", "float32", (1, 1), "SAME"),
    } <= set(kernels)
    assert {v["kernel"] for v in kernels.values()} == {"xla"} and {v["source"] for v in kernels.values()} == {"timed"}
    assert len(timed) == 2 * len(kernels)  # each shape's two candidates, once
    assert summary["allocator"].startswith("glibc malloc")


@pytest.mark.parametrize("mode,im2col", [("auto", True), ("xla", False)])
def test_a_symbolic_batch_is_not_timed_and_exports(auto, monkeypatch, mode, im2col):
    timed = given_timings(monkeypatch, {"im2col": 5.0, "xla": 1.0})
    monkeypatch.setenv("FNTRAIN_CONV", mode)
    (batch,) = jax.export.symbolic_shape("b")
    w = jnp.ones(W.shape, W.dtype)
    exported = jax.export.export(jax.jit(lambda x: conv2d_nhwc(x, w, (1, 1), "SAME")), platforms=["cpu", "cuda"])(
        jax.ShapeDtypeStruct((batch, *X.shape[1:]), X.dtype))
    assert timed == [] and conv_choice.choices() == {}
    # The CPU branch is im2col's matmul (the default, untimed) or the forced XLA convolution.
    assert ("stablehlo.dot_general" in exported.mlir_module()) == im2col
