"""A population's outputs: the loop's own callbacks, and the finish (best states, test,
``params.npz`` of the best member, ``members/params_<i>.npz``, ``summary.json``)."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np

from fntrain import config as cfg
from fntrain import storage, tensorboard
from fntrain.callbacks import MetricsFile
from fntrain.rundir import MEMBERS_DIR, RunDir, flatten_tree
from fntrain.status import StatusFile
from fntrain.population.summary import population_summary


class MemberScalars:
    """TensorBoard for a population: member ``i``'s values as ``member_<i>/<split>/<metric>``."""

    def __init__(self, inner):
        self.inner = inner

    def on_log(self, step: int, split: str, metrics: dict) -> None:
        rest = {k: v for k, v in metrics.items() if k != "member"}
        self.inner.on_log(step, f"member_{metrics['member']}/{split}", rest)

    def on_train_start(self, run) -> None:
        self.inner.on_train_start(run)

    def on_checkpoint(self, step: int, path: str) -> None:
        self.inner.on_checkpoint(step, path)

    def on_train_end(self, result) -> None:
        self.inner.on_train_end(result)

    def close(self) -> None:
        self.inner.close()


def member_outputs(config: cfg.Config, run_dir: RunDir, status: StatusFile) -> list:
    """metrics.jsonl (one line per member per event), the status file and TensorBoard."""
    outputs: list = [MetricsFile(run_dir), status]
    if tensorboard.wanted(config.log.tensorboard) and run_dir.writer:
        from fntrain.tensorboard import TensorBoard

        board = TensorBoard(run_dir.path, cfg.dump_config(config), cfg.config_to_dict(config), "(a population)")
        outputs.append(MemberScalars(board))
    return outputs


def save_member_params(run_dir: RunDir, m: int, params, model_state) -> None:
    """``members/params_<m>.npz``, in the layout of ``params.npz`` (``RunDir.load_params`` reads it)."""
    if not run_dir.writer:
        return
    arrays = {**flatten_tree(params, "params"), **flatten_tree(model_state, "model_state")}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (run_dir.path / MEMBERS_DIR).mkdir(exist_ok=True)
    storage.atomic_write(run_dir.path / MEMBERS_DIR / f"params_{m}.npz", buffer.getvalue())


def finish(run, ts, loop, train_seconds: float):
    """Restores each member's best state if asked, evaluates on test, writes the parameters and the summary."""
    from fntrain.loop import TrainResult
    from fntrain.population.loop import evaluate_split, host_member
    from fntrain.population.step import select

    es, size = run.config.early_stopping, len(run.members)
    if run.track_best and es.restore_best and run.best is not None:
        has_best = np.array([e.best_step is not None for e in loop.early])
        ts = select(jnp.asarray(has_best), run.best, ts)
        for m in np.flatnonzero(has_best):
            loop.final[m]["val"] = loop.early[m].best_metrics
        run.progress.write(f"restored each member's best parameters (val {es.metric})")
    if run.data.test is not None:
        evaluate_split(run, ts, loop, "test", list(range(size)))
    run.progress.close()
    split = "val" if run.data.val is not None else "train"
    metric, mode = (es.metric, es.mode) if split == "val" else ("loss", "min")
    population = population_summary(run.members, loop.final, loop.early, loop.stopped_at, split=split, metric=metric, mode=mode)
    best = population["best_member"]
    for m in range(size):
        save_member_params(run.run_dir, m, host_member(ts.params, m), host_member(ts.model_state, m))
    run.run_dir.save_params(host_member(ts.params, best), host_member(ts.model_state, best))
    summary = _summary(run, ts, loop, train_seconds, population)
    run.run_dir.write_summary(summary)
    for rank, m in enumerate(population["ranking"][:10]):
        shown = loop.final[m].get(split, {})
        run.say(f"#{rank + 1} member {m} ({run.members[m].describe()}): {split} "
                + " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    result = TrainResult(ts, loop.final[best], summary, str(run.run_dir.path))
    run.callbacks.on_train_end(result)
    return result


def _summary(run, ts, loop, train_seconds: float, population: dict) -> dict:
    best = population["best_member"]
    examples = (loop.step - (run.resumed_from or 0)) * run.config.data.batch_size * len(run.members)
    return {
        "steps": loop.step,
        "epochs": run.cadence.epoch(loop.step),
        "final": loop.final[best],  # the best member's, so tools that read one run keep working
        "best": _best_entry(loop.early[best], best),
        "params": "raw",
        "stopped_early": loop.all_stopped,
        "nonfinite_steps": int(sum(loop.nonfinite_steps)),
        "resumed_from_step": run.resumed_from,
        "train_time_s": train_seconds,
        "status": "finished",
        "examples_per_second": examples / max(train_seconds, 1e-9),  # summed over the members (padding counted)
        "num_params": int(sum(np.prod(a.shape[1:]) for a in jax.tree.leaves(ts.params))),
        "devices": [str(d) for d in run.placement.mesh.devices.flat],
        "processes": 1,
        "population": population,
    }


def _best_entry(early, member: int):
    """``summary.best`` of a single run, for the best member (``member`` added)."""
    if early.best_step is None:
        return None
    return {"step": early.best_step, "val": early.best_metrics, "split": "val", "member": member}
