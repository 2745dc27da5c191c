"""The loop's parts on their own: cadence, dispatches, the log window and early stopping."""

import itertools

import jax
import numpy as np
import pytest

from fntrain import data as data_lib
from fntrain.cadence import Cadence, Events
from fntrain.dispatch import dispatches
from fntrain.early_stopping import EarlyStopping
from fntrain.window import LogWindow


def iterator(n: int, batch_size: int, **kwargs) -> data_lib.BatchIterator:
    arrays = data_lib.Arrays(np.arange(n, dtype=np.float32)[:, None], np.arange(n, dtype=np.int32))
    return data_lib.BatchIterator(arrays, batch_size, key=jax.random.key(0), **kwargs)


def test_eval_every_steps_and_every_epochs_fire_at_their_union():
    # 7 steps an epoch, 3 epochs: every 5 steps (5, 10, 15, 20), every 2 epochs (14), the end (21).
    c = Cadence(total_steps=21, steps_per_epoch=7, log_every=50, eval_every_steps=5, eval_every_epochs=2)
    assert [s for s in range(1, 22) if c.events(s).eval] == [5, 10, 14, 15, 20, 21]
    assert [s for s in range(1, 22) if c.events(s).epoch_end] == [7, 14, 21]
    assert [s for s in range(1, 22) if c.events(s).log] == [21]
    assert [s for s in range(1, 22) if c.events(s).checkpoint] == [21]  # no periodic checkpoints
    assert c.events(21) == Events(log=True, eval=True, checkpoint=True, epoch_end=True, end=True)
    assert not c.events(3)


def test_a_steps_run_has_no_epoch_events():
    c = Cadence(total_steps=10, steps_per_epoch=3, log_every=4, eval_every_epochs=None, checkpoint_every=6, by_epoch=False)
    assert [s for s in range(1, 11) if c.events(s)] == [4, 6, 8, 10]
    assert not any(c.events(s).epoch_end for s in range(1, 11))


CADENCES = [
    # (examples, batch, drop_last, kind, total or epochs, log, eval steps, eval epochs, checkpoint, K)
    (50, 16, False, "epochs", 3, 5, None, 1, None, 4),  # 3 full batches then a partial one per epoch
    (50, 16, True, "epochs", 4, 2, 3, None, 5, 8),
    (64, 8, False, "steps", 37, 10, 7, None, 15, 6),
    (100, 7, False, "epochs", 2, 3, None, 2, 4, 50),
    (30, 30, False, "steps", 5, 2, None, None, None, 3),
]


@pytest.mark.parametrize("n, b, drop, kind, length, log, eval_s, eval_e, ckpt, k", CADENCES)
def test_fused_dispatches_never_cross_an_event_and_cover_every_step(n, b, drop, kind, length, log, eval_s, eval_e, ckpt, k):
    it = iterator(n, b, drop_last=drop)
    spe = it.steps_per_epoch
    c = Cadence(
        total_steps=length * spe if kind == "epochs" else length, steps_per_epoch=spe, log_every=log,
        eval_every_steps=eval_s, eval_every_epochs=eval_e if kind == "epochs" else None, checkpoint_every=ckpt,
        by_epoch=kind == "epochs",
    )
    reference = iterator(n, b, drop_last=drop)  # the same stream, one batch at a time
    step = 0
    for d in dispatches(it, c, 0, steps_per_dispatch=k, rows_only=True):
        assert 1 <= d.steps <= k
        # No event inside the dispatch: only its last step may have one.
        assert not any(c.events(s) for s in range(step + 1, step + d.steps)), (step, d.steps)
        rows = d.batch if k > 1 else d.batch[None]
        expected = [reference.next_indices() for _ in range(d.steps)]
        # A partial batch runs alone; full batches keep their order.
        assert all(len(e) == b for e in expected) or d.steps == 1
        np.testing.assert_array_equal(rows, np.stack(expected))
        assert d.examples == sum(len(e) for e in expected)
        assert d.position == reference.state
        step += d.steps
    assert step == c.total_steps


def test_dispatches_resumed_at_a_checkpoint_continue_the_uninterrupted_ones():
    c = Cadence(total_steps=40, steps_per_epoch=7, log_every=10, checkpoint_every=15, by_epoch=False)
    whole = list(dispatches(iterator(50, 8), c, 0, steps_per_dispatch=6, rows_only=True))
    done = 0
    for i, d in enumerate(whole):
        done += d.steps
        if done == 15:  # the checkpoint: a new iterator at the saved position takes over
            break
    resumed = list(dispatches(iterator(50, 8, state=d.position), c, 15, steps_per_dispatch=6, rows_only=True))
    assert [x.steps for x in resumed] == [x.steps for x in whole[i + 1:]]
    for a, b in zip(resumed, whole[i + 1:]):
        np.testing.assert_array_equal(a.batch, b.batch)


def test_host_batches_are_stacked_and_placed():
    c = Cadence(total_steps=4, steps_per_epoch=4, log_every=4, by_epoch=False)
    placed = []
    out = list(dispatches(iterator(32, 8, shuffle=False), c, 0, steps_per_dispatch=4, put=lambda b: placed.append(b) or b))
    assert len(out) == 1 and out[0].steps == 4 and out[0].examples == 32
    x, y = out[0].batch
    assert x.shape == (4, 8, 1) and y.shape == (4, 8)
    np.testing.assert_array_equal(y.reshape(-1), np.arange(32))
    assert len(placed) == 1


# --------------------------------------------------------------------------- log window


def test_the_window_is_fetched_once_per_boundary(monkeypatch):
    import fntrain.window as window_module

    calls = []
    real = window_module.to_host
    monkeypatch.setattr(window_module, "to_host", lambda tree: calls.append(1) or real(tree))
    w = LogWindow()
    for i in range(5):
        w.add({"loss": jax.numpy.float32(i), "nonfinite": jax.numpy.int32(0)})
    assert w.nonfinite() == 0 and w.steps == 5 and w.means()["loss"] == 2.0 and w.to_meta()
    assert len(calls) == 1  # the finiteness check, the means and the checkpoint share one fetch


def test_a_window_restored_mid_way_gives_the_uninterrupted_means():
    metrics = [{"loss": np.float32(v), "nonfinite": np.int32(0), "grad_norm": np.float32(np.nan if i % 2 else v)}
               for i, v in enumerate([0.3, 0.1, 0.7, 0.2, 0.9])]
    whole = LogWindow()
    for m in metrics:
        whole.add(m)
    first = LogWindow()
    for m in metrics[:2]:
        first.add(m)
    resumed = LogWindow.from_meta(first.to_meta())
    for m in metrics[2:]:
        resumed.add(m)
    assert resumed.means() == whole.means()  # bit for bit: the same float32 columns
    assert whole.means()["grad_norm"] == pytest.approx(np.mean(np.float32([0.3, 0.7, 0.9])), rel=1e-7)


def test_fused_metrics_are_columns():
    w = LogWindow()
    w.add({"loss": jax.numpy.arange(3.0)})
    w.add({"loss": jax.numpy.float32(3.0)})
    np.testing.assert_array_equal(w.columns()["loss"], [0, 1, 2, 3])


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_counts_evaluations_without_improvement():
    es, args = EarlyStopping(), dict(metric="loss", mode="min", min_delta=0.05)
    history = []
    for step, loss in zip(itertools.count(10, 10), [1.0, 0.8, 0.78, 0.9, 0.7, 0.72, 0.71]):
        es = es.update(step, {"loss": loss}, **args)
        history.append((es.best_step, es.evals_without_improvement, es.should_stop(2)))
    # 0.78 is not 0.05 better than 0.8; 0.7 is; then two without improvement stop the run.
    assert history == [(10, 0, False), (20, 0, False), (20, 1, False), (20, 2, True), (50, 0, False),
                       (50, 1, False), (50, 2, True)]
    assert EarlyStopping.from_meta(es.to_meta()) == es


def test_early_stopping_max_mode_and_no_patience():
    es = EarlyStopping().update(1, {"accuracy": 0.5}, metric="accuracy", mode="max", min_delta=0.0)
    es = es.update(2, {"accuracy": 0.6}, metric="accuracy", mode="max", min_delta=0.0)
    es = es.update(3, {"accuracy": 0.6}, metric="accuracy", mode="max", min_delta=0.0)  # equal is no improvement
    assert (es.best_step, es.evals_without_improvement) == (2, 1)
    assert not es.should_stop(None)
