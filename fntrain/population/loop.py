"""The population's outer loop: :func:`fntrain.train` for a config with a ``population`` section.

It follows :mod:`fntrain.loop` stage by stage (set-up, dispatches between events, finish)
over a ``TrainState`` whose leaves carry a member axis ``[M]``. Events are the single run's
(:mod:`fntrain.cadence`); at each one every member that is still training writes its own
metrics.jsonl line (``member`` beside the usual keys). A member that stops early keeps its
state unchanged (its updates are masked in the step); the run ends when all have stopped.
Checkpoints hold the stacked state and every member's bookkeeping, so a resumed population
continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Optional, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from fntrain import builders
from fntrain import config as cfg
from fntrain import data as data_lib
from fntrain import signals
from fntrain.cadence import Cadence, CheckpointTimer
from fntrain.callbacks import Callbacks, MetricsFile, RunInfo
from fntrain.callbacks import from_config as callbacks_from_config
from fntrain.checkpoint import Checkpointer, param_shapes
from fntrain.dispatch import dispatches
from fntrain.early_stopping import EarlyStopping
from fntrain.opening import Opening, open_run, prepare
from fntrain.parallel import to_host
from fntrain.population import outputs, setup
from fntrain.population.evaluation import evaluate_members
from fntrain.population.members import Member, expand, grid_arrays
from fntrain.population.placement import MemberPlacement, member_placement
from fntrain.population.step import NetShape, make_population_eval_step, make_population_step, select
from fntrain.population.window import MemberWindow
from fntrain.progress import Progress
from fntrain.rundir import RunDir
from fntrain.signals import Interrupted
from fntrain.state import TrainState
from fntrain.status import StatusFile

__all__ = ["train_population"]


@dataclasses.dataclass
class PopulationLoop:
    """What the loop carries between steps besides the ``TrainState``; saved in each checkpoint.

    Per-member lists are indexed by member.
    """

    step: int
    positions: list  # each member's data iterator position
    window: MemberWindow
    early: list  # EarlyStopping per member
    active: list  # bool per member: still training
    stopped_at: list  # the step each member stopped early at, or None
    nonfinite_steps: list
    final: list  # {split: metrics} per member

    @classmethod
    def fresh(cls, size: int) -> "PopulationLoop":
        return cls(0, [data_lib.IteratorState()] * size, MemberWindow(), [EarlyStopping()] * size, [True] * size,
                   [None] * size, [0] * size, [{} for _ in range(size)])

    @property
    def all_stopped(self) -> bool:
        return not any(self.active)

    def to_meta(self, params) -> dict:
        return {
            "step": self.step,
            "positions": [p.to_dict() for p in self.positions],
            "window": self.window.to_meta(),
            "early": [e.to_meta() for e in self.early],
            "active": self.active,
            "stopped_at": self.stopped_at,
            "nonfinite_steps": self.nonfinite_steps,
            "final": self.final,
            "param_shapes": param_shapes(params),
        }

    @classmethod
    def from_meta(cls, meta: dict) -> "PopulationLoop":
        return cls(
            meta["step"], [data_lib.IteratorState.from_dict(p) for p in meta["positions"]],
            MemberWindow.from_meta(meta["window"]), [EarlyStopping.from_meta(e) for e in meta["early"]],
            list(meta["active"]), list(meta["stopped_at"]), list(meta["nonfinite_steps"]), list(meta["final"]),
        )


@dataclasses.dataclass
class _Run:
    """What the set-up builds (read-only after it), and the best state so far."""

    config: cfg.Config
    members: list[Member]
    net: Any  # every member's network (the grid changes no layer)
    data: setup.MemberData
    cadence: Cadence
    iterators: list
    schedules: list
    values: dict  # {dotted.key: [M] float32} on the device
    data_index: jax.Array
    resident: tuple  # the stacked training data on the devices
    placement: MemberPlacement
    pad: bool
    train_step: Any
    eval_step: Any
    run_dir: RunDir
    checkpointer: Checkpointer
    opening: Opening
    timer: CheckpointTimer
    callbacks: Callbacks
    progress: Progress
    status: StatusFile
    say: Any
    resumed_from: Optional[int]
    best: Optional[TrainState] = None  # each member's best state (track_best)

    @property
    def track_best(self) -> bool:
        es = self.config.early_stopping
        return self.data.val is not None and (self.config.checkpoint.keep_best or es.patience is not None)


def train_population(
    config: cfg.Config, *, overwrite: bool = False, resume: Optional[bool] = None, stream: TextIO | None = None,
    callbacks: Sequence[Any] = (),
):
    """Trains every member of ``config.population``; arguments and errors as :func:`fntrain.train`.

    Returns a :class:`fntrain.loop.TrainResult` whose ``state`` is the stacked population state,
    ``metrics`` the best member's and ``summary`` the whole ``summary.json``.
    """
    from fntrain.loop import _close, _ended_as, _first_line, _stop_if_signalled

    resume = config.checkpoint.resume if resume is None else resume
    with signals.guard() as guard:
        guard.starting = True
        run, ts, loop = _set_up(config, overwrite, resume, stream or sys.stdout, callbacks, guard)
        try:
            _stop_if_signalled(guard, f"the run is unchanged at step {loop.step}" if loop.step else "no step was trained")
            run.callbacks.on_train_start(RunInfo(
                config, run.net, run.data.splits[0], str(run.run_dir.path), run.cadence.total_steps,
                run.cadence.steps_per_epoch, loop.step,
            ))
            guard.starting = False
            started = time.perf_counter()
            ts = _run_dispatches(run, ts, loop, guard)
            return outputs.finish(run, ts, loop, time.perf_counter() - started)
        except BaseException as e:
            run.status.end(_ended_as(e), step=loop.step, message=_first_line(e))
            raise
        finally:
            _close(run)


def _set_up(config, overwrite, resume, stream, user_callbacks, guard):
    """Members, data, state, steps and run directory; ``(run, train_state, loop)``."""
    from fntrain.loop import _check_early_stopping_metric, _stop_if_signalled, _takes_weights

    setup.check_supported(config)
    say = lambda line: print(line, file=stream, flush=True)  # noqa: E731
    members = expand(config)
    opening = prepare(config, overwrite=overwrite, resume=resume)
    checkpointer, unchanged = None, "the run directory is unchanged" if opening.had_run else "nothing was written"
    try:
        _stop_if_signalled(guard, unchanged)
        exps = setup.member_experiments(members)
        first = exps[members[0].seed]
        _check_early_stopping_metric(config, first)
        data = setup.member_data(members, exps)
        steps_per_epoch = setup.member_iterators(config, members[:1], exps, [data_lib.IteratorState()])[0].steps_per_epoch
        cadence = Cadence.from_config(config, steps_per_epoch)
        schedules = setup.member_schedules(members, exps, cadence.total_steps)
        shape = NetShape(builders.infer_num_outputs(first.splits, config.loss), tuple(first.splits.train.x.shape[1:]))
        placement = member_placement(config, len(members))
        ts = jax.device_put(setup.initial_state(config, members, exps, shape, cadence.total_steps), placement.member)
        _stop_if_signalled(guard, unchanged)
        run_dir, checkpointer, restored = open_run(opening, config, ts, say)
        loop = PopulationLoop.fresh(len(members)) if restored is None else PopulationLoop.from_meta(restored[1])
        ts = ts if restored is None else restored[0]
        progress = Progress(cadence.total_steps, config.log.progress, stream, initial=loop.step,
                            batch_size=config.data.batch_size * len(members))
        status = StatusFile(run_dir)
        run = _Run(
            config=config, members=members, net=first.net, data=data, cadence=cadence,
            iterators=setup.member_iterators(config, members, exps, loop.positions), schedules=schedules,
            values=jax.device_put(grid_arrays(members), placement.member),
            data_index=jax.device_put(jnp.asarray(data.index), placement.member),
            resident=jax.device_put(data.train, placement.replicated), placement=placement,
            pad=first.loss is not None and _takes_weights(first.loss),
            train_step=make_population_step(config, shape, cadence.total_steps, placement),
            eval_step=make_population_eval_step(config, shape, placement), run_dir=run_dir, checkpointer=checkpointer,
            opening=opening, timer=CheckpointTimer(config.checkpoint.every_minutes),
            callbacks=Callbacks(outputs.member_outputs(config, run_dir, status),
                                [*callbacks_from_config(config), *user_callbacks]),
            progress=progress, status=status, say=say, resumed_from=loop.step if restored is not None else None,
        )
        if restored is not None and run.track_best and any(e.best_step is not None for e in loop.early):
            best = checkpointer.restore_best(ts)
            run.best = None if best is None else best[0]
    except BaseException:
        if checkpointer is not None:
            checkpointer.close()
        opening.abandon()
        raise
    _announce(run, loop)
    return run, ts, loop


def _announce(run: _Run, loop: PopulationLoop) -> None:
    train = run.data.splits[0].train
    sets = len(run.data.train[0])
    run.say(
        f"population: {len(run.members)} members ({run.config.population.size} seed(s) x "
        f"{len(run.config.population.points())} grid point(s)) in one compiled step; {train.num_examples} train "
        f"examples per member ({sets} distinct data set(s) on the device); {run.cadence.total_steps} steps "
        f"({run.cadence.steps_per_epoch} per epoch); {run.placement.num_devices} device(s), "
        f"{len(run.members) // run.placement.num_devices} member(s) each; output_dir {run.run_dir.path}"
    )
    if run.resumed_from is not None:
        run.say(f"resumed from {run.checkpointer.latest.directory}/{loop.step} (step {loop.step})")


# --------------------------------------------------------------------------- dispatches


def _upcoming(run: _Run, loop: PopulationLoop):
    """The population's dispatches from ``loop.step``: each member's rows, stacked ``[M, ...]``."""
    pad_to = run.config.data.batch_size if run.pad else None
    k = run.config.loop.fixed_dispatch_size
    streams = [
        dispatches(it, run.cadence, loop.step, steps_per_dispatch=k, rows_only=True, pad_to=pad_to)
        for it in run.iterators
    ]
    for parts in zip(*streams):
        rows = jax.tree.map(lambda *r: np.stack(r), *[p.batch for p in parts])
        yield parts[0].steps, rows, [p.position for p in parts], sum(p.examples for p in parts)


def _timed_checkpoint(run: _Run, loop: PopulationLoop) -> bool:
    """Whether ``checkpoint.every_minutes`` asks for a checkpoint now; a window with a non-finite
    update (``on_nonfinite: stop``) is left to its log line, as in a single run."""
    if not run.timer.due():
        return False
    stop = run.config.loop.on_nonfinite == "stop"
    return not (stop and any(loop.active[m] and loop.window.nonfinite(m) for m in range(len(run.members))))


def _run_dispatches(run: _Run, ts: TrainState, loop: PopulationLoop, guard) -> TrainState:
    for steps, rows, positions, examples in _upcoming(run, loop):
        active = jax.device_put(np.array(loop.active, bool), run.placement.member)
        ts, metrics = run.train_step(ts, rows, run.values, active, run.data_index, run.resident)
        loop.step += steps
        loop.positions = positions
        loop.window.add(metrics)
        events = run.cadence.events(loop.step)
        if events.log:
            _log_train(run, loop)
        if events.eval and run.data.val is not None:
            ts = _evaluate_val(run, ts, loop)
        if events.checkpoint or loop.all_stopped or guard.received or _timed_checkpoint(run, loop):
            _checkpoint(run, ts, loop)
        if guard.received:
            raise Interrupted(
                f"stopped by {guard.name()} at step {loop.step}; checkpoint written to "
                f"{run.checkpointer.latest.directory}/{loop.step}; continue with: fntrain train CONFIG --resume",
                guard.received,
            )
        if loop.all_stopped:
            break
    return ts


# --------------------------------------------------------------------------- events


def check_finite(run: _Run, loop: PopulationLoop) -> None:
    """Raises NonFiniteError if a training member's window holds a non-finite update (``on_nonfinite: stop``)."""
    from fntrain.loop import NonFiniteError

    if run.config.loop.on_nonfinite != "stop":
        return
    bad = [m for m in range(len(run.members)) if loop.active[m] and loop.window.nonfinite(m)]
    if bad:
        last = run.checkpointer.latest_step()
        where = f"{run.checkpointer.latest.directory}/{last} (step {last})" if last is not None else "none was written"
        raise NonFiniteError(
            f"the loss or gradients of population member {bad[0]} ({run.members[bad[0]].describe()}) became NaN/inf "
            f"by step {loop.step}; the last good checkpoint is {where}. Lower its learning rate, set "
            "optimizer.clip_grad_norm, or set loop.on_nonfinite=skip"
        )


def _log_train(run: _Run, loop: PopulationLoop) -> None:
    """One metrics.jsonl line per training member: its window's means (one host fetch in all)."""
    check_finite(run, loop)
    epoch = run.cadence.epoch(loop.step)
    shown = []
    for m in range(len(run.members)):
        if not loop.active[m]:
            continue
        values = loop.window.means(m)
        loop.nonfinite_steps[m] += int(values.pop("nonfinite"))
        values["nonfinite_steps"] = loop.nonfinite_steps[m]
        values["learning_rate"] = float(run.schedules[m](loop.step - 1))
        run.callbacks.on_log(loop.step, "train", {"member": m, "epoch": epoch, **values})
        loop.final[m]["train"] = values
        shown.append(values)
    run.progress.on_log(loop.step, "train", _mean_of(shown, ("loss", "accuracy")))
    loop.window.clear()


def _mean_of(rows: list[dict], names) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in names if rows and all(k in r for r in rows)}


def evaluate_split(run: _Run, ts: TrainState, loop: PopulationLoop, split: str, members: list[int]) -> list[dict]:
    """Evaluates ``split`` for every member (one vmapped pass), logs the lines of ``members``."""
    from fntrain.loop import _eval_batch_size

    results = evaluate_members(run.eval_step, ts, run.values, getattr(run.data, split), run.data.index,
                               _eval_batch_size(run.config), pad=run.pad)
    for m in members:
        step = loop.stopped_at[m] or loop.step  # a member that stopped early ended there, as its single run does
        run.callbacks.on_log(step, split, {"member": m, "epoch": run.cadence.epoch(step), **results[m]})
        run.callbacks.on_eval(step, split, {"member": m, **results[m]}, ts)
        loop.final[m][split] = results[m]
    return results


def _evaluate_val(run: _Run, ts: TrainState, loop: PopulationLoop) -> TrainState:
    """Evaluates on val; updates each training member's early stopping and the best states."""
    es = run.config.early_stopping
    training = [m for m in range(len(run.members)) if loop.active[m]]
    results = evaluate_split(run, ts, loop, "val", training)
    improved = np.zeros(len(run.members), bool)
    for m in training:
        improved[m] = loop.early[m].improved_by(results[m], metric=es.metric, mode=es.mode, min_delta=es.min_delta)
        loop.early[m] = loop.early[m].update(loop.step, results[m], metric=es.metric, mode=es.mode, min_delta=es.min_delta)
        if loop.early[m].should_stop(es.patience):
            loop.active[m], loop.stopped_at[m] = False, loop.step
            run.progress.write(
                f"early stopping member {m} ({run.members[m].describe()}) at step {loop.step}: val {es.metric} "
                f"has not improved for {es.patience} evaluations (best {loop.early[m].best_metrics[es.metric]:.4f} "
                f"at step {loop.early[m].best_step})"
            )
    values = [results[m][es.metric] for m in training]
    if values:
        best = training[int(np.argmin(values) if es.mode == "min" else np.argmax(values))]
        run.progress.write(f"val @ step {loop.step}: {es.metric} mean {np.mean(values):.4f} over {len(values)} "
                           f"training member(s), best member {best} {results[best][es.metric]:.4f}")
    if improved.any() and run.track_best:
        run.best = select(jnp.asarray(improved), ts, ts if run.best is None else run.best)
        check_finite(run, loop)
        run.checkpointer.save(run.best, loop.to_meta(ts.params), best=True)
    return ts


def _checkpoint(run: _Run, ts: TrainState, loop: PopulationLoop) -> None:
    check_finite(run, loop)
    path = run.checkpointer.save(ts, loop.to_meta(ts.params))
    run.timer.reset()
    run.callbacks.on_checkpoint(loop.step, path)


def host_member(tree, m: int):
    """Member ``m``'s slice of a stacked pytree, on the host."""
    return jax.tree.map(lambda a: np.asarray(a[m]), to_host(tree))

