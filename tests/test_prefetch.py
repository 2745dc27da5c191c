"""The prefetch thread (fntrain/data/prefetch.py): same items, same order, same run, bit for bit."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fntrain as ft
from fntrain.data import Prefetcher, prefetch

ROOT = Path(__file__).resolve().parent.parent
DIGITS = str(ROOT / "configs/digits_mlp.yaml")


def test_items_come_in_order_and_at_most_size_ahead():
    made = []

    def items():
        for i in range(20):
            made.append(i)
            yield i

    with Prefetcher(items(), size=3) as p:
        assert next(p) == 0
        time.sleep(0.2)
        # One handed out, three waiting and at most one more being made.
        assert len(made) <= 5
        assert list(p) == list(range(1, 20))


def test_an_error_is_raised_where_its_item_would_have_come():
    def items():
        yield 1
        yield 2
        raise ValueError("bad batch")

    p = prefetch(items(), 2)
    assert [next(p), next(p)] == [1, 2]
    with pytest.raises(ValueError, match="bad batch"):
        next(p)
    with pytest.raises(StopIteration):
        next(p)
    p.close()


def test_close_stops_the_thread_and_closes_the_items():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    p = Prefetcher(endless(), size=2)
    assert next(p) == 0
    p.close()
    assert closed.wait(5) and not p._thread.is_alive()
    with pytest.raises(StopIteration):
        next(p)


def test_size_zero_runs_inline_and_bad_sizes_are_refused():
    with prefetch(iter([1, 2]), 0) as p:
        assert list(p) == [1, 2] and threading.active_count() >= 1
    with pytest.raises(ValueError, match="size"):
        Prefetcher(iter([]), 0)


BASE = ["log.progress=none", "model.hidden_sizes=[32]", "model.dropout_rate=0.2", "log.every_steps=5",
        "loop.kind=steps", "loop.eval_every_steps=15", "optimizer.schedule={name: constant}", "data.on_device=false",
        "checkpoint.every_steps=10"]


def _train(out: Path, *overrides: str, **kwargs):
    config = ft.load_config(DIGITS, [*BASE, f"output_dir={out}", *overrides])
    return ft.train(config, stream=io.StringIO(), **kwargs)


def _assert_same_run(a: Path, b: Path):
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    with np.load(a / "params.npz") as pa, np.load(b / "params.npz") as pb:
        for name in pa.files:
            np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


@pytest.mark.parametrize("k", [1, 4])
def test_prefetching_changes_no_number_and_resumes_exactly(tmp_path, k):
    """Host batches (on_device false), padded final batches included (1437 / 64): prefetch 0
    and 3 give identical runs; stopped at step 30 and resumed with prefetch 2, identical too."""
    fuse = f"loop.steps_per_dispatch={k}"
    _train(tmp_path / "inline", "loop.num_steps=60", "data.prefetch=0", fuse)
    _train(tmp_path / "ahead", "loop.num_steps=60", "data.prefetch=3", fuse)
    _assert_same_run(tmp_path / "inline", tmp_path / "ahead")
    _train(tmp_path / "resumed", "loop.num_steps=30", "data.prefetch=2", fuse)
    result = _train(tmp_path / "resumed", "loop.num_steps=60", "data.prefetch=2", fuse, resume=True)
    assert result.summary["resumed_from_step"] == 30
    _assert_same_run(tmp_path / "inline", tmp_path / "resumed")
