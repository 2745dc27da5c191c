"""scripts/bench.py: the smoke run prints Markdown tables with a finite positive number in every
measured column, and each peer's step passes the training sanity check (checked inside its worker)."""

import argparse
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench.py"

spec = importlib.util.spec_from_file_location("bench", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench  # equinox modules defined in the script look their module up
spec.loader.exec_module(bench)

INSTALLED = [p for p in bench.PEERS if bench.peer_available(p)]
# torch.compile takes ~15 s to compile even the tiny MLP on 2 cores: only in the slow run.
FAST_PEERS = [p for p in INSTALLED if p != "torch-compile"]


def run_bench(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--rounds", "1", "--windows", "1", "--fuse", "4", *args],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def tables(text: str) -> list[list[list[str]]]:
    """Markdown tables in ``text``, each a list of rows of cells (header first, separator dropped)."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            assert line.endswith("|"), line
            current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            found.append(current)
            current = []
    for table in found:
        assert all(set(cell) <= set("- ") for cell in table[1]), f"second row is not a separator: {table[1]}"
        del table[1]
        assert all(len(row) == len(table[0]) for row in table), table
    return found


def assert_measured(table, workloads, not_measured=()):
    """Every cell but the workload's holds finite positive numbers, except columns in ``not_measured``."""
    header, rows = table[0], table[1:]
    assert [row[0] for row in rows] == workloads
    for row in rows:
        for column, cell in zip(header[1:], row[1:]):
            if column in not_measured:
                assert cell == "n/a", (column, cell)
                continue
            numbers = re.findall(r"\d[\d,]*(?:\.\d+)?", cell)
            assert numbers, f"{row[0]} / {column}: {cell!r}"
            for n in numbers:
                value = float(n.replace(",", ""))
                assert math.isfinite(value) and value > 0, f"{row[0]} / {column}: {cell!r}"


def check_output(text, workloads, peers):
    fntrain_table, peer_table = tables(text)
    assert_measured(fntrain_table, workloads)
    assert peer_table[0][4:] == peers
    assert_measured(peer_table, workloads, not_measured=[p for p in peers if p not in INSTALLED])
    assert "% of roofline" in peer_table[1][1]
    for name in workloads:  # the verdict line for each workload: best configuration, roofline fraction
        assert re.search(rf"^- {name}: fntrain best (K=1|K=4|loop) \(\d+\.\d\d, \d+% of roofline\)", text, re.M), text
    assert re.search(r"^machine: .+, \d+ cores, flags .+, jax \d", text, re.M), text
    assert re.search(r"^load average \(1 min\): \d+\.\d\d before, \d+\.\d\d after", text, re.M), text
    chosen = re.search(r"^loop.steps_per_dispatch: auto chose, per round: (.+)$", text, re.M)
    assert chosen and all(re.search(rf"\b{w} K=\d+ \(", chosen.group(1)) for w in workloads), text
    if "W3" in workloads:  # its two convolutions, float32 and bfloat16 (conftest pins FNTRAIN_CONV=im2col)
        kernels = re.findall(r"^conv kernel on W3 x8x28x28x\d+ w3x3x\d+x\d+ .+: im2col \(forced: not timed\)$", text, re.M)
        assert len(kernels) == 4, text


def test_tiny_without_peers():
    check_output(run_bench("--workloads", "W1,W3", "--peers", "none"), ["W1", "W3"], [])


@pytest.mark.skipif(not FAST_PEERS, reason="no peer framework installed (pip install -e .[bench])")
def test_tiny_with_installed_peers():
    check_output(run_bench("--workloads", "W1", "--peers", ",".join(FAST_PEERS)), ["W1"], FAST_PEERS)


@pytest.mark.slow
def test_tiny_all_workloads_all_peers():
    workloads = ["W1", "W2", "W3", "W4"]
    check_output(run_bench("--peers", "all"), workloads, list(bench.PEERS))


def parameter_count(peer, state) -> int:
    import jax
    import numpy as np

    if peer == "flax-linen":
        params = state.params
    elif peer == "flax-nnx":
        from flax import nnx

        params = nnx.state(state[0], nnx.Param)
    elif peer == "equinox":
        import equinox as eqx

        params = eqx.filter(state[0], eqx.is_array)
    elif peer == "haiku":
        params = state[0]
    else:
        return sum(p.numel() for p in state[0].parameters())
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("name", [pytest.param("W1", marks=pytest.mark.slow), pytest.param("W3", marks=pytest.mark.slow), "W4"])
@pytest.mark.parametrize("peer", [p for p in INSTALLED if p != "torch-compile"])  # torch's model
def test_peer_trains_the_hand_written_network(peer, name):
    """Same parameter count as the hand-written network (a cheap proxy for the same architecture)."""
    import jax

    init, _ = bench.hand_written(name)
    expected = sum(leaf.size for leaf in jax.tree.leaves(init(jax.random.key(0))))
    _, state, _, _ = bench.PEER_BUILDERS[peer](name, bench.make_batch(name, tiny=True))
    assert parameter_count(peer, state) == expected


def test_sanity_check_rejects_non_training_steps():
    bench.check_learns("p", "W1", [2.3, 2.0, 1.5], 10)  # near ln(10) = 2.30 and falling: accepted
    with pytest.raises(RuntimeError, match="initial loss"):
        bench.check_learns("p", "W1", [2.3 * 128, 100.0], 10)  # summed over the batch, not averaged
    with pytest.raises(RuntimeError, match="did not decrease"):
        bench.check_learns("p", "W1", [2.3, 2.3, 2.3], 10)  # parameters never updated
    with pytest.raises(RuntimeError, match="non-finite"):
        bench.check_learns("p", "W4", [5.5, float("nan")], 256)


def test_peers_option():
    assert bench.parse_peers("none") == []
    assert bench.parse_peers("all") == list(bench.PEERS)
    assert bench.parse_peers("torch,haiku") == ["torch", "haiku"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown peer"):
        bench.parse_peers("tensorflow")
