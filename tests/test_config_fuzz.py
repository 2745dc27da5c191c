"""Property: whatever a shipped config is mutated into, the CLI accepts it or refuses it in one line.

Mutations of ``configs/*.yaml``: keys dropped, unknown keys inserted, values swapped between
keys, values replaced by other types, huge, negative or non-finite numbers, long strings,
nested junk, aliases (shared values and alias bombs), keys given twice, and the same as
``dotted.key=value`` overrides. The property: ``fntrain train ... --print-config`` exits 0
(and prints a config that validates again) or exits 2 with exactly one stderr line starting
with ``error:``, never a traceback or a warning, within a time and memory bound.

Validation runs in this process through ``fntrain.cli.main`` (milliseconds an example); a
few mutated configs also train two steps in a fresh, memory-capped process. Examples are
derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_contract import assert_one_error_line, run_worker
from fntrain import cli
from fntrain import config as cfg
from fntrain import limits

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs").glob("*.yaml"))}
FAST_TO_TRAIN = ("digits_mlp", "regression_mlp", "synthetic_classification", "digits_cnn")
EXAMPLE_SECONDS = 5.0  # one validation, on a loaded 2-core machine (typically 5-50 ms)
RUNAWAY_SECONDS = 60  # an example still running then is stopped, and fails
RSS_GROWTH = 512 << 20  # the whole in-process property may raise this process's peak RSS by at most this
MAX_LONG = 100_000  # characters of the longest generated string

# --------------------------------------------------------------------------- values


def alias_bomb(levels: int):
    """Nested lists that share their children: 9 ** levels leaves, dumped as anchors and aliases."""
    node = [1] * 9
    for _ in range(levels):
        node = [node] * 9
    return node


def nested(depth: int):
    node: object = 1
    for i in range(depth):
        node = [node] if i % 2 else {"k": node}
    return node


NAMES = ["mlp", "cnn", "adam", "sgd", "digits", "npz", "mse", "relu", "steps", "epochs", "piecewise", "fntrain.nn:mlp",
         "fntrain.nn:no_such", "no_such_module:fn", "..relative:fn", "os:system", "queue:Queue", "", " ", "null",
         "a:b:c", "\u2028", "x\ny", "\x1b[31m"]
NUMBERS = [0, 1, -1, 2, 2**31 - 1, 2**31, 2**63, 10**20, -(10**20), 10**300, 1e20, 1e308, -1e-300, 0.5, 1.0, 1e-12,
           float("inf"), float("-inf"), float("nan")]
scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(NUMBERS), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NAMES), st.text(max_size=12),
    st.integers(1000, MAX_LONG).map(lambda n: "a" * n),
)
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=6)), inner, max_size=3)),
    max_leaves=12)
values = st.one_of(
    junk, st.integers(1, 12).map(alias_bomb), st.integers(1, 40).map(nested),
    st.lists(st.sampled_from(NUMBERS), min_size=1, max_size=4),
)

# --------------------------------------------------------------------------- mutations


def key_paths(node, prefix=()) -> list[tuple]:
    """Every path to a mapping key, sections included."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += key_paths(v, (*prefix, k))
    return out


def section_paths(node, prefix=()) -> list[tuple]:
    out = [prefix] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += section_paths(v, (*prefix, k))
    return out


def reaches(node, target, seen=None) -> bool:
    """Whether ``target`` (by identity) is ``node`` or inside it: aliasing it there would make a cycle."""
    seen = set() if seen is None else seen
    if node is target:
        return True
    if id(node) in seen or not isinstance(node, (dict, list)):
        return False
    seen.add(id(node))
    return any(reaches(child, target, seen) for child in (node.values() if isinstance(node, dict) else node))


def flow(value) -> str:
    """``value`` as one line of flow-style YAML (aliases included)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("\n...")


def get(raw, path):
    for part in path:
        raw = raw[part]
    return raw


@st.composite
def mutated(draw, names=tuple(SHIPPED), benign=False):
    """``(config file text, overrides)``: a shipped config after 0-4 mutations."""
    name = draw(st.sampled_from(names))
    raw = yaml.safe_load(yaml.safe_dump(SHIPPED[name]))
    overrides, extra_lines = [], []
    kinds = ["scale"] if benign else ["drop", "unknown", "swap", "set", "alias", "scale", "override", "twice", "deep"]
    for _ in range(draw(st.integers(0, 4 if not benign else 2))):
        kind = draw(st.sampled_from(kinds))
        keys = key_paths(raw)
        if kind == "scale":
            numeric = [p for p in keys if isinstance(get(raw, p), (int, float)) and not isinstance(get(raw, p), bool)]
            if numeric:
                path = draw(st.sampled_from(numeric))
                factor = draw(st.sampled_from([0, 0.5, 2, 3, -1] if benign else [0, -1, 10**6, 1e300, 0.5]))
                value = get(raw, path) * factor
                get(raw, path[:-1])[path[-1]] = type(get(raw, path))(value) if benign else value
        elif not keys:
            continue
        elif kind == "drop":
            path = draw(st.sampled_from(keys))
            del get(raw, path[:-1])[path[-1]]
        elif kind == "unknown":
            section = draw(st.sampled_from(section_paths(raw)))
            key = draw(st.one_of(st.sampled_from(["optimiser", "lr", "hidden", "name", "kwargs", "x" * 2000]),
                                 st.text(min_size=1, max_size=10)))
            get(raw, section)[key] = draw(values)
        elif kind == "swap":
            a, b = draw(st.sampled_from(keys)), draw(st.sampled_from(keys))
            va, vb = get(raw, a), get(raw, b)
            if not reaches(va, get(raw, b[:-1])) and not reaches(vb, get(raw, a[:-1])):  # no cycle either way
                get(raw, a[:-1])[a[-1]], get(raw, b[:-1])[b[-1]] = vb, va
        elif kind == "set":
            path = draw(st.sampled_from(keys))
            get(raw, path[:-1])[path[-1]] = draw(values)
        elif kind == "alias":  # the same object twice: YAML writes an anchor and an alias
            a, b = draw(st.sampled_from(keys)), draw(st.sampled_from(keys))
            if not reaches(get(raw, a), get(raw, b[:-1])):
                get(raw, b[:-1])[b[-1]] = get(raw, a)
        elif kind == "deep":  # written as text: deeper than YAML writers go
            depth = draw(st.integers(1, 2000))
            extra_lines.append("deep: " + "[" * depth + "]" * depth)
        elif kind == "override":
            path = draw(st.sampled_from(keys + [("loop", "num_steps"), ("optimizer", "learning_rate"), ("nope",)]))
            overrides.append(".".join(map(str, path)) + "=" + flow(draw(values)))
        elif kind == "twice":
            path = draw(st.sampled_from([p for p in keys if len(p) == 1]))
            extra_lines.append(f"{path[0]}: {flow(draw(scalars))}")
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=draw(st.booleans()), width=10**9)
    return text + "".join(line + "\n" for line in extra_lines), overrides


# --------------------------------------------------------------------------- the property


class Runaway(BaseException):
    """Raised by the alarm in an example that runs past RUNAWAY_SECONDS (a BaseException: nothing catches it)."""


@contextlib.contextmanager
def alarm(seconds: float):
    def stop(signum, frame):
        raise Runaway(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_print_config(text: str, overrides: list[str], folder: Path) -> None:
    path = folder / "mutated.yaml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    saved_path = list(sys.path)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        try:
            with alarm(RUNAWAY_SECONDS):
                rc = cli.main(["train", str(path), "--print-config", *overrides])
        except SystemExit as e:
            rc = e.code
    elapsed = time.perf_counter() - start
    sys.path[:] = saved_path
    assert not caught, [str(w.message)[:300] for w in caught]
    assert elapsed < EXAMPLE_SECONDS, elapsed
    if rc == 0:
        assert err.getvalue() == ""
        cfg.validate(cfg.parse_yaml(out.getvalue(), "printed"), "printed")  # what it printed is a valid config
    else:
        line = assert_one_error_line(rc, err.getvalue())
        assert len(line) <= len("error: ") + limits.MAX_MESSAGE_CHARS
        assert out.getvalue() == ""


@pytest.mark.parametrize("examples", [60, pytest.param(250, marks=pytest.mark.slow)])
def test_mutated_configs_validate_or_are_refused_in_one_line(tmp_path_factory, examples):
    folder = tmp_path_factory.mktemp("fuzz")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        run_property(folder, examples)
    finally:
        os.chdir(cwd)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert growth < RSS_GROWTH, f"peak RSS grew by {growth / 2**20:.0f} MiB"


def run_property(folder: Path, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated())
    def prop(example):
        check_print_config(*example, folder)

    prop()


@settings(max_examples=1, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(st.lists(mutated(FAST_TO_TRAIN, benign=True), min_size=3, max_size=3))
def test_mutated_configs_train_two_steps_or_are_refused_in_one_line(tmp_path, examples):
    """Three mutated configs, each trained two steps in one fresh, memory-capped process."""
    cases = []
    for i, (text, overrides) in enumerate(examples):
        (tmp_path / f"m{i}.yaml").write_text(text)
        steps = ["loop.kind=steps", "loop.num_steps=2", "log.progress=none", f"output_dir=runs/m{i}"]
        if "warmup_cosine" in text:  # a warm-up must end within the two steps
            steps.append("optimizer.schedule.warmup_steps=0")
        cases.append({"argv": ["train", f"m{i}.yaml", *overrides, *steps], "cwd": tmp_path})
    run = run_worker(cases, tmp_path)
    for result, (text, _) in zip(run.results, examples):
        if result["rc"] == 0:
            assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
        elif result["rc"] == 3:  # the loss became NaN/inf: its own one-line error
            assert result["stderr"].startswith("error: ") and len(result["stderr"].splitlines()) == 1
        else:
            assert_one_error_line(result["rc"], result["stderr"])
    assert run.peak_rss < 2 << 30, f"peak RSS {run.peak_rss / 2**20:.0f} MiB"
