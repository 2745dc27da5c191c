"""The allocator setting measured per machine and config by `fntrain tune`, applied by `fntrain train`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fntrain as ft
from fntrain import allocator_choice, malloc, tuning

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/digits_mlp.yaml")
SHORT = ["loop.kind=steps", "loop.num_steps=8", "log.every_steps=4", "log.progress=none", "data.batch_size=32",
         "optimizer.schedule={name: constant}"]
glibc_only = pytest.mark.skipif(malloc._glibc() is None or malloc._preloaded_allocator(), reason="needs glibc malloc")


def key(*overrides):
    return allocator_choice.workload_key(ft.load_config(CONFIG, list(overrides)))


def test_the_workload_key_follows_the_workload_not_the_run():
    base = key()
    assert key("seed=3", "output_dir=/tmp/x", "loop.num_epochs=2", "log.every_steps=7", "optimizer.learning_rate=0.1") == base
    assert len({base, key("data.batch_size=17"), key("model.hidden_sizes=[8]"), key("precision=bfloat16"),
                key("loop.steps_per_dispatch=4")}) == 5


@pytest.mark.parametrize("rates,chosen", [
    ({"tuned": 100.0, "system": 102.0, "hugetlb": 101.0}, "tuned"),  # within the margin: the default stays
    ({"tuned": 100.0, "system": 104.0, "hugetlb": 101.0}, "system"),
    ({"tuned": 100.0, "system": 90.0, "hugetlb": 120.0}, "hugetlb"),
    ({"system": 90.0, "hugetlb": 80.0}, "system"),
])
def test_the_fastest_is_chosen_beyond_the_margin(rates, chosen):
    assert allocator_choice.choose(rates) == chosen


def test_the_hugetlb_environment_adds_glibcs_tunable_once():
    env = allocator_choice.environment("hugetlb", {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "A": "1"})
    assert env == {"A": "1", "FNTRAIN_MALLOC": "hugetlb",
                   "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"}
    assert allocator_choice.environment("hugetlb", env) == env
    assert allocator_choice.environment("system", {}) == {"FNTRAIN_MALLOC": "system"}


def cli(*args, cache, env=None):
    env = {k: v for k, v in os.environ.items() if k not in ("FNTRAIN_MALLOC", "GLIBC_TUNABLES")} | (env or {})
    env |= {"FNTRAIN_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-P", "-m", "fntrain", *args], env=env, capture_output=True, text=True, timeout=600)


def trained_allocator(tmp_path, name, env=None) -> str:
    out = tmp_path / name
    done = cli("train", CONFIG, *SHORT, f"output_dir={out}", cache=tmp_path / "cache", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "summary.json").read_text())["allocator"]


def store(monkeypatch, tmp_path, mode):
    monkeypatch.setenv("FNTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    assert tuning.store(allocator_choice.CACHE_KIND, key(*SHORT), {"mode": mode})


@glibc_only
def test_train_applies_the_measured_setting_unless_the_environment_says_otherwise(monkeypatch, tmp_path):
    assert trained_allocator(tmp_path, "unmeasured").startswith("glibc malloc, tuned by fntrain: JAX will run on XLA:CPU")
    store(monkeypatch, tmp_path, "system")
    assert trained_allocator(tmp_path, "measured") == (
        "glibc malloc, default values restored: measured fastest for this config on this machine by fntrain tune")
    assert trained_allocator(tmp_path, "forced", {"FNTRAIN_MALLOC": "tuned"}) == (
        "glibc malloc, tuned by fntrain: FNTRAIN_MALLOC=tuned")


@glibc_only
@pytest.mark.skipif("hugetlb" not in allocator_choice.available(), reason="needs transparent huge pages and glibc 2.35")
def test_train_restarts_itself_with_glibcs_tunable_for_hugetlb(monkeypatch, tmp_path):
    store(monkeypatch, tmp_path, "hugetlb")
    assert trained_allocator(tmp_path, "huge") == (
        "glibc malloc, defaults: FNTRAIN_MALLOC=hugetlb; heap on transparent huge pages "
        "(glibc.malloc.hugetlb=1 in GLIBC_TUNABLES)")


@glibc_only
def test_tune_measures_each_setting_and_train_then_uses_the_fastest(tmp_path):
    done = cli("tune", CONFIG, *SHORT, "--steps", "8", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == allocator_choice.available()
    stored = json.loads((tmp_path / "cache" / "allocator.json").read_text())[tuning.machine()][key(*SHORT)]
    assert set(stored["examples_per_second"]) == set(allocator_choice.available())
    assert stored["mode"] == allocator_choice.choose(stored["examples_per_second"])
    assert lines[-1].startswith(f"fastest here: FNTRAIN_MALLOC={stored['mode']};")


def test_tune_refuses_too_few_steps_in_one_line(tmp_path):
    done = cli("tune", CONFIG, "--steps", "2", cache=tmp_path / "cache")
    assert done.returncode == 2 and done.stderr == "error: --steps must be at least 4, got 2\n"


@glibc_only
@pytest.mark.skipif("hugetlb" not in allocator_choice.available(), reason="needs transparent huge pages and glibc 2.35")
def test_the_hugetlb_environment_puts_the_heap_on_huge_pages():
    code = ("a = bytearray(256 << 20)\nfor i in range(0, len(a), 4096): a[i] = 1\n"
            "print(next(l for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')).split()[1])")
    env = allocator_choice.environment("hugetlb", {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"})
    huge_kb = int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert huge_kb >= 128 << 10  # most of the 256 MiB block


def test_tune_says_in_one_line_when_its_answer_cannot_be_kept(monkeypatch, tmp_path, capsys):
    from fntrain import cli as fntrain_cli

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FNTRAIN_CACHE_DIR", str(tmp_path / "file" / "cache"))  # under a file: cannot be made
    monkeypatch.setattr(allocator_choice, "measure", lambda *args, say: {"tuned": 1.0, "system": 2.0})
    assert fntrain_cli.main(["tune", CONFIG]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fastest here: FNTRAIN_MALLOC=system, but it could not be kept in ") and err.count("\n") == 1
