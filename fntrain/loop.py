"""The outer loop: config in, a trained ``TrainState`` and a run directory out.

:func:`train` reads as its stages: set-up (placement, experiment, optimizer, state, run
directory, restore), then dispatches of up to K fused steps between events, each event
(log, evaluate, checkpoint) handled by a function of its own, then the finish
(restore-best, test evaluation, parameters, summary). When events happen is decided in
:mod:`fntrain.cadence` alone; outside code joins through :mod:`fntrain.callbacks`.

The loop is resumable at any step: everything it carries from one step to the next
(train state, data position, the unfinished log window, early-stopping bookkeeping)
goes into each checkpoint, so a resumed run continues exactly as an uninterrupted one
would, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence, TextIO

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fntrain import builders
from fntrain import config as cfg
from fntrain import data as data_lib
from fntrain import config_diff, malloc, nn, optim, signals
from fntrain.cadence import Cadence, CheckpointTimer
from fntrain.autofuse import AutoFusion, fused_size
from fntrain.callbacks import Callbacks, MetricsFile, RunInfo
from fntrain.callbacks import from_config as callbacks_from_config
from fntrain.checkpoint import Checkpointer, param_shapes
from fntrain.dispatch import Dispatch, dispatches
from fntrain.early_stopping import EarlyStopping
from fntrain.errors import ConfigError
from fntrain.evaluation import evaluate_arrays, make_eval_stats_step, reduce_batches
from fntrain.experiment import Experiment, build_experiment, metric_names
from fntrain.guards import CompileGuard, check_donation
from fntrain.layer_grads import layer_stats
from fntrain.opening import Opening, open_run, prepare
from fntrain.parallel import DATA_AXIS, Placement, gather_to_host, initialize_distributed, make_placement, to_host
from fntrain.progress import Progress, format_values
from fntrain.rundir import HISTORY, RunDir
from fntrain.signals import Interrupted
from fntrain.tensorboard import TensorBoard
from fntrain import tensorboard
from fntrain.state import TrainState
from fntrain.status import StatusFile
from fntrain.step import fused, jit_step, make_step, on_rows, skipping_nonfinite
from fntrain.window import LogWindow

__all__ = ["Interrupted", "NonFiniteError", "TrainResult", "build_experiment", "train"]

EXIT_NONFINITE = 3
DEVICE_DATA_LIMIT_BYTES = 1 << 30  # data.on_device: null keeps training splits up to this size on the device


class TrainResult(NamedTuple):
    """What ``train`` returns.

    Attributes:
      state: the final ``TrainState`` (the best one when early stopping restores it).
      metrics: final metrics per split, e.g. ``{"val": {"loss": ..., "accuracy": ...}}``.
      summary: the contents of ``summary.json``.
      output_dir: the run directory.
    """

    state: TrainState
    metrics: dict[str, dict[str, float]]
    summary: dict[str, Any]
    output_dir: str


class NonFiniteError(RuntimeError):
    """The loss or gradients became NaN or infinite (``loop.on_nonfinite: stop``)."""

    exit_code = EXIT_NONFINITE


# --------------------------------------------------------------------------- the loop's state


@dataclasses.dataclass
class LoopState:
    """What the loop carries between steps besides the ``TrainState``; saved in each checkpoint.

    Attributes:
      step: steps done.
      data_position: the training iterator's next ``(epoch, offset)``.
      window: training metrics since the last log line.
      early: the best evaluation so far (:class:`~fntrain.early_stopping.EarlyStopping`).
      nonfinite_steps: updates skipped as non-finite (``on_nonfinite: skip``).
      final: the latest metrics per split, for the summary.
      stopped_early: early stopping ended the run.
    """

    step: int = 0
    data_position: data_lib.IteratorState = data_lib.IteratorState()
    window: LogWindow = dataclasses.field(default_factory=LogWindow)
    early: EarlyStopping = EarlyStopping()
    nonfinite_steps: int = 0
    final: dict = dataclasses.field(default_factory=dict)
    stopped_early: bool = False

    def to_meta(self, params) -> dict:
        return {
            "step": self.step,
            "data_position": self.data_position.to_dict(),
            "window": self.window.to_meta(),
            **self.early.to_meta(),
            "nonfinite_steps": self.nonfinite_steps,
            "final": self.final,
            "param_shapes": param_shapes(params),
        }

    @classmethod
    def from_meta(cls, meta: dict) -> "LoopState":
        return cls(
            step=meta["step"],
            data_position=data_lib.IteratorState.from_dict(meta["data_position"]),
            window=LogWindow.from_meta(meta["window"]),
            early=EarlyStopping.from_meta(meta),
            nonfinite_steps=meta["nonfinite_steps"],
            final=meta["final"],
        )


@dataclasses.dataclass
class _Run:
    """What the set-up builds for the steps and the finish (read-only after set-up)."""

    config: cfg.Config
    exp: Experiment
    placement: Placement
    cadence: Cadence
    iterator: data_lib.BatchIterator
    schedule: Callable
    run_dir: RunDir
    checkpointer: Checkpointer
    opening: Opening  # holds the run directory's lock
    timer: CheckpointTimer
    callbacks: Callbacks
    progress: Progress
    status: StatusFile
    say: Callable[[str], None]
    train_step: Callable
    fused_step: Optional[Callable]  # loop.steps_per_dispatch: auto, the fused program it may choose
    fusion: Optional[AutoFusion]  # ...and its choice
    eval_step: Callable
    resident: Any  # the training split on the device, or None
    pad: bool  # batches padded to full size with weight-0 rows, so shapes never change
    stats_fn: Optional[Callable]
    resumed_from: Optional[int]
    observe: Optional[Callable]  # reduce_on_plateau: observe(opt_state, value) -> opt_state
    conv_mark: int  # where this run's convolutions start in nn.conv_choice's record

    @property
    def ema(self) -> bool:
        return self.config.optimizer.ema_decay is not None

    @property
    def chosen(self) -> str:
        """The val split early stopping and reduce_on_plateau watch: ``val`` or ``val_ema``."""
        return "val_ema" if self.config.optimizer.eval_params == "ema" else "val"

    @property
    def track_best(self) -> bool:
        es = self.config.early_stopping
        return self.exp.splits.val is not None and (self.config.checkpoint.keep_best or es.patience is not None)


class _Clock:
    """Wall time, training time (evaluations excluded) and throughput."""

    def __init__(self):
        self.start = self.window_start = time.perf_counter()
        self.window_examples = self.examples = self.steady_examples = 0
        self.steady_seconds = self.eval_seconds = 0.0
        self.first_window = True  # it pays for compilation

    def window_done(self) -> float:
        """Ends a log window; returns its seconds (evaluations excluded)."""
        elapsed = time.perf_counter() - self.window_start
        if not self.first_window:
            self.steady_examples += self.window_examples
            self.steady_seconds += elapsed
        self.first_window = False
        self.examples += self.window_examples
        self.window_examples, self.window_start = 0, time.perf_counter()
        return elapsed

    def exclude(self, seconds: float) -> None:
        self.eval_seconds += seconds
        self.window_start += seconds


# --------------------------------------------------------------------------- train


def train(
    config: cfg.Config,
    *,
    overwrite: bool = False,
    resume: Optional[bool] = None,
    stream: TextIO | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Trains as the config says, writing the run directory; usable from notebooks.

    Args:
      config: the validated config (``fntrain.load_config``).
      overwrite: replace a run already in ``output_dir``.
      resume: continue from the latest checkpoint in ``output_dir`` if there is one;
        None: ``config.checkpoint.resume``.
      stream: where progress goes (stdout by default).
      callbacks: objects with any of the methods of :mod:`fntrain.callbacks`, called after
        the config's own ``callbacks``.

    A config with a ``population`` section trains all its members at once
    (:mod:`fntrain.population`); ``state`` then has a member axis on every leaf.

    Example:
      >>> config = fntrain.load_config("configs/digits_mlp.yaml", ["loop.num_epochs=2"])
      >>> result = fntrain.train(config, overwrite=True)
      >>> result.metrics["val"]["accuracy"]

    Raises:
      ConfigError: a bad config or data (nothing is written in that case), or a callback
        that raised (``CallbackError``; the last checkpoint is intact).
      NonFiniteError: the loss diverged (``loop.on_nonfinite: stop``); the last good
        checkpoint is intact.
      Interrupted: SIGTERM/SIGINT; a checkpoint of the current step was written (or, during
        start-up, the run directory was left as it was).
      StorageError: a file of the run could not be written (a full disk, say); the run
        resumes with ``resume=True`` once the cause is fixed.
    """
    if config.population is not None:
        from fntrain.population import train_population

        return train_population(config, overwrite=overwrite, resume=resume, stream=stream, callbacks=callbacks)
    resume = config.checkpoint.resume if resume is None else resume
    with signals.guard() as guard:
        guard.starting = True
        run, ts, loop = _set_up(config, overwrite, resume, stream or sys.stdout, callbacks, guard)
        try:
            _stop_if_signalled(guard, f"the run is unchanged at step {loop.step}" if loop.step else "no step was trained")
            run.callbacks.on_train_start(_run_info(run, loop))
            guard.starting = False
            clock = _Clock()
            ts = _steps(run, ts, loop, clock, guard)
            return _finish(run, ts, loop, clock)
        except BaseException as e:
            run.status.end(_ended_as(e), step=loop.step, message=_first_line(e))
            raise
        finally:
            _close(run)


def _ended_as(error: BaseException) -> str:
    """The status a run that raised ``error`` ends with."""
    if isinstance(error, (Interrupted, KeyboardInterrupt)):
        return "interrupted"
    return "diverged" if isinstance(error, NonFiniteError) else "failed"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _close(run: "_Run") -> None:
    """Closes the outputs and the checkpointer and releases the lock; an error on the way
    out never hides the one that ended the run."""
    for close in (run.callbacks.close, run.progress.close, run.checkpointer.close, run.opening.release):
        try:
            close()
        except Exception:  # noqa: BLE001
            pass


def _stop_if_signalled(guard: signals.SignalGuard, state: str) -> None:
    """Honours a signal that arrived during start-up: the run directory is consistent
    (``state`` says how), so stop before the first step."""
    if guard.received is not None:
        raise Interrupted(
            f"stopped by {guard.name()} during start-up, before the first step; {state}; "
            "continue with: fntrain train CONFIG --resume",
            guard.received,
        )


def _steps(run: _Run, ts: TrainState, loop: LoopState, clock: _Clock, guard: signals.SignalGuard) -> TrainState:
    """Dispatches until the end of the run, early stopping or a signal, handling each event."""
    with _upcoming(run, loop) as upcoming:
        return _run_dispatches(run, ts, loop, clock, guard, upcoming)


def _upcoming(run: _Run, loop: LoopState):
    """The run's dispatches from ``loop.step``; host batches read (only this process's rows),
    padded and placed by a thread ``data.prefetch`` dispatches ahead."""
    dc, resident = run.config.data, run.resident is not None
    pad_to = dc.batch_size if run.pad else None
    gather = None if resident else functools.partial(
        data_lib.gather_batch, run.exp.splits.train, pad_to=pad_to,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    size = (lambda: run.fusion.size) if run.fusion else run.config.loop.fixed_dispatch_size
    upcoming = dispatches(
        run.iterator, run.cadence, loop.step, steps_per_dispatch=size,
        rows_only=resident, pad_to=pad_to, put=None if resident else run.placement.global_batch, gather=gather,
    )
    return data_lib.prefetch(upcoming, 0 if resident else dc.prefetch)


def _run_dispatches(run: _Run, ts: TrainState, loop: LoopState, clock: _Clock, guard: signals.SignalGuard, upcoming):
    throttle = run.placement.num_devices > 1 and jax.devices()[0].platform == "cpu"
    compiled, pending = set(), next(upcoming, None)
    while pending is not None:
        dispatch = pending
        step_fn = run.fused_step if dispatch.fused and run.fused_step else run.train_step
        started = time.perf_counter()
        previous, (ts, metrics) = ts, step_fn(ts, dispatch.batch)
        if step_fn not in compiled:
            compiled.add(step_fn)
            check_donation(previous, "train_step")
            if run.fusion:
                run.fusion.compiled(dispatch.steps, time.perf_counter() - started)
        pending = next(upcoming, None)  # prepared while the device runs this dispatch
        loop.step += dispatch.steps
        loop.data_position = dispatch.position
        loop.window.add(metrics)
        clock.window_examples += dispatch.examples
        if throttle:
            # Simulated CPU devices share the host's cores; a deep queue of collective programs
            # can starve one device thread past XLA's 40 s rendezvous limit. One step in flight.
            jax.block_until_ready(metrics)
        events = run.cadence.events(loop.step)
        if events.log:
            _log_train(run, ts, loop, dispatch, clock)
        if events.eval and run.exp.splits.val is not None:
            started = time.perf_counter()
            ts = _evaluate_val(run, ts, loop)
            clock.exclude(time.perf_counter() - started)
        if events.checkpoint or loop.stopped_early or guard.received or _timed_checkpoint(run, loop, events):
            _checkpoint(run, ts, loop)
        if guard.received:
            raise Interrupted(
                f"stopped by {guard.name()} at step {loop.step}; checkpoint written to "
                f"{run.checkpointer.latest.directory}/{loop.step}; continue with: fntrain train CONFIG --resume",
                guard.received,
            )
        if loop.stopped_early:
            break
    return ts


# --------------------------------------------------------------------------- events


def _timed_checkpoint(run: _Run, loop: LoopState, events) -> bool:
    """Whether ``checkpoint.every_minutes`` asks for a checkpoint after this dispatch.

    Every process must agree, so with several processes the time is read on process 0
    and broadcast, at log steps only. A window with a non-finite update (``on_nonfinite:
    stop``) is left to its log line, which stops the run as it would without the timer.
    """
    if run.timer.interval is None:
        return False
    if jax.process_count() > 1:
        if not events.log:
            return False
        from jax.experimental import multihost_utils

        due = bool(multihost_utils.broadcast_one_to_all(np.int32(run.timer.due())))
    else:
        due = run.timer.due()
    return due and not (run.config.loop.on_nonfinite == "stop" and loop.window.nonfinite())


def _check_finite(run: _Run, loop: LoopState) -> None:
    """Raises NonFiniteError if the window holds a non-finite update (``on_nonfinite: stop``)."""
    if run.config.loop.on_nonfinite != "stop" or not loop.window.nonfinite():
        return
    last = run.checkpointer.latest_step()
    where = f"{run.checkpointer.latest.directory}/{last} (step {last})" if last is not None else "none was written"
    first = loop.step - loop.window.steps + 1
    raise NonFiniteError(
        f"the loss or gradients became NaN/inf between steps {first} and {loop.step}; "
        f"the last good checkpoint is {where}. Lower optimizer.learning_rate, set "
        "optimizer.clip_grad_norm, or set loop.on_nonfinite=skip"
    )


def _log_train(run: _Run, ts: TrainState, loop: LoopState, dispatch: Dispatch, clock: _Clock) -> None:
    """Writes the window's mean training metrics as one line (one host fetch of the window)."""
    _check_finite(run, loop)
    values = loop.window.means()
    loop.nonfinite_steps += int(values.pop("nonfinite"))
    values["nonfinite_steps"] = loop.nonfinite_steps
    values["learning_rate"] = float(run.schedule(loop.step - 1))
    scale = optim.plateau_scale_of(ts.opt_state)
    if scale is not None:
        values["lr_scale"] = float(to_host(scale))
        values["learning_rate"] *= values["lr_scale"]
    if run.stats_fn is not None:
        x, y = _last_batch(run, dispatch)
        stats = to_host(run.stats_fn(run.exp.net, ts.params, ts.model_state, x, y, run.exp.loss))
        values.update({f"layers/{k}": float(v) for k, v in stats.items() if k != "loss"})
    seconds = clock.window_done()
    if run.fusion:
        run.fusion.window_done(loop.window.steps, seconds, run.cadence.total_steps - loop.step)
    run.callbacks.on_log(loop.step, "train", {"epoch": run.cadence.epoch(loop.step), **values})
    loop.final["train"] = values
    loop.window.clear()


def _last_batch(run: _Run, dispatch: Dispatch):
    """The dispatch's last batch ``(x, y)`` on the device (for layer statistics)."""
    last = jax.tree.map(lambda a: a[-1], dispatch.batch) if dispatch.fused else dispatch.batch
    if run.resident is None:
        return last[:2]
    rows = last[0] if run.pad else last
    return jax.tree.map(lambda a: a[rows], run.resident)


def _with_ema(ts: TrainState) -> TrainState:
    """``ts`` with the EMA of the parameters in place of the parameters."""
    return ts._replace(params=optim.ema_params(ts.opt_state, ts.params))


def _evaluate(run: _Run, ts: TrainState, loop: LoopState, split: str) -> dict[str, dict[str, float]]:
    """Evaluates one split (and, with an EMA, its ``<split>_ema``), logs it and tells the callbacks."""
    arrays = getattr(run.exp.splits, split)
    batch_size = _eval_batch_size(run.config, run.placement.num_devices if run.pad else 1)
    results = {}
    for name, state in [(split, ts)] + ([(f"{split}_ema", _with_ema(ts))] if run.ema else []):
        if run.pad:
            with data_lib.prefetch(_eval_batches(run, arrays, batch_size), _eval_prefetch(run, arrays)) as batches:
                metrics = reduce_batches(run.eval_step, state, batches)
        else:
            metrics = evaluate_arrays(run.eval_step, state, arrays, batch_size, run.placement.put_batch, pad=False)
        run.callbacks.on_log(loop.step, name, {"epoch": run.cadence.epoch(loop.step), **metrics})
        run.callbacks.on_eval(loop.step, name, metrics, state)
        loop.final[name] = results[name] = metrics
    return results


def _eval_batches(run: _Run, arrays: data_lib.Arrays, batch_size: int):
    """The split in order, padded batches of ``batch_size`` placed on the mesh; each process
    reads only its own rows of each batch."""
    n, index, count = arrays.num_examples, jax.process_index(), jax.process_count()
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        local = data_lib.gather_batch(arrays, rows, pad_to=batch_size, process_index=index, process_count=count)
        yield run.placement.global_batch(local)


def _eval_prefetch(run: _Run, arrays: data_lib.Arrays) -> int:
    """Evaluation batches read from disk are prefetched like training batches; in memory, not."""
    return run.config.data.prefetch if data_lib.is_lazy(arrays.x) or data_lib.is_lazy(arrays.y) else 0


def _evaluate_val(run: _Run, ts: TrainState, loop: LoopState) -> TrainState:
    """Evaluates on val, feeds reduce_on_plateau and updates early stopping (and the best checkpoint)."""
    es = run.config.early_stopping
    metrics = _evaluate(run, ts, loop, "val")[run.chosen]
    if run.observe is not None:
        ts = ts._replace(opt_state=run.observe(ts.opt_state, metrics[run.config.optimizer.reduce_on_plateau.metric]))
    improved = loop.early.improved_by(metrics, metric=es.metric, mode=es.mode, min_delta=es.min_delta)
    loop.early = loop.early.update(loop.step, metrics, metric=es.metric, mode=es.mode, min_delta=es.min_delta)
    if improved and run.track_best:
        _checkpoint(run, ts, loop, best=True)
    loop.stopped_early = loop.early.should_stop(es.patience)
    if loop.stopped_early:
        best = loop.early.best_metrics[es.metric]
        run.progress.write(
            f"early stopping at step {loop.step}: {run.chosen} {es.metric} has not improved for "
            f"{es.patience} evaluations (best {best:.4f} at step {loop.early.best_step})"
        )
    return ts


def _checkpoint(run: _Run, ts: TrainState, loop: LoopState, *, best: bool = False) -> None:
    _check_finite(run, loop)
    path = run.checkpointer.save(ts, loop.to_meta(ts.params), best=best)
    if not best:
        run.timer.reset()
    run.callbacks.on_checkpoint(loop.step, path)


# --------------------------------------------------------------------------- finish


def _finish(run: _Run, ts: TrainState, loop: LoopState, clock: _Clock) -> TrainResult:
    """Restores the best parameters if asked, evaluates on test, writes params and summary."""
    train_seconds = time.perf_counter() - clock.start - clock.eval_seconds
    es, early = run.config.early_stopping, loop.early
    if run.track_best and es.restore_best and early.best_step is not None and early.best_step != loop.step:
        restored = run.checkpointer.restore_best(ts)
        if restored is None:
            run.progress.write(f"could not read the best checkpoint (step {early.best_step}); keeping the last parameters")
        else:
            ts = restored[0]
            loop.final.pop("val_ema" if run.chosen == "val" else "val", None)  # of another step's parameters
            loop.final[run.chosen] = early.best_metrics
            run.progress.write(
                f"restored the best parameters (step {early.best_step}, {run.chosen} {es.metric} "
                f"{early.best_metrics[es.metric]:.4f})"
            )
    if run.exp.splits.test is not None:
        _evaluate(run, ts, loop, "test")
    run.progress.close()
    saved = _with_ema(ts) if run.config.optimizer.eval_params == "ema" else ts
    run.run_dir.save_params(*gather_to_host((saved.params, saved.model_state)))
    summary = _summary(run, ts, loop, clock, train_seconds)
    run.run_dir.write_summary(summary)
    for split, values in loop.final.items():
        run.say(f"final {split}: " + format_values(values))
    result = TrainResult(ts, loop.final, summary, str(run.run_dir.path))
    run.callbacks.on_train_end(result)
    _say_where(run)
    return result


def _say_where(run: _Run) -> None:
    """The run's last lines: where its curves and TensorBoard logs are (the plot is drawn here)."""
    path = run.run_dir.path
    if run.config.log.plot and run.run_dir.writer:
        from fntrain.plot import plot_runs, save_plot

        save_plot(plot_runs([path], warn=run.say), path / "curves.png")
        run.say(f"learning curves: {path / 'curves.png'} (fntrain plot {path} [OTHER_RUN ...] to compare)")
    if any(isinstance(c, TensorBoard) for c, _ in run.callbacks.entries):
        run.say(f"tensorboard logs: tensorboard --logdir {path / 'tensorboard'}")




def _summary(run: _Run, ts: TrainState, loop: LoopState, clock: _Clock, train_seconds: float) -> dict:
    early = loop.early
    return {
        "steps": loop.step,
        "epochs": run.cadence.epoch(loop.step),
        "final": loop.final,
        "best": {"step": early.best_step, "val": early.best_metrics, "split": run.chosen} if early.best_step is not None else None,
        "params": run.config.optimizer.eval_params,  # which parameters params.npz holds: raw or ema
        "stopped_early": loop.stopped_early,
        "nonfinite_steps": loop.nonfinite_steps,
        "resumed_from_step": run.resumed_from,
        "wall_time_s": time.perf_counter() - clock.start,
        "train_time_s": train_seconds,
        "status": "finished",
        "examples_per_second": clock.examples / max(train_seconds, 1e-9),
        "steady_examples_per_second": clock.steady_examples / clock.steady_seconds if clock.steady_seconds else None,
        "num_params": nn.count_params(ts.params),
        "network": run.exp.shapes,  # what fntrain.load_run sizes the network by
        "devices": [str(d) for d in run.placement.mesh.devices.flat],
        "processes": jax.process_count(),
        "steps_per_dispatch": run.fusion.summary() if run.fusion else run.config.loop.fixed_dispatch_size,
        "conv_kernels": nn.conv_choice.choices(since=run.conv_mark),  # XLA:CPU's, per shape
        "allocator": malloc.status,
    }


# --------------------------------------------------------------------------- set-up


def _set_up(
    config: cfg.Config, overwrite: bool, resume: bool, stream: TextIO, user_callbacks: Sequence[Any],
    guard: signals.SignalGuard,
):
    """Builds everything the steps need; returns ``(run, train_state, loop_state)``.

    The run directory is checked and locked first, so a refused start is quick and
    changes nothing; a signal during start-up stops it between stages. A failure
    releases the lock (and removes the directory if it wrote nothing there).
    """
    pc, conv_mark = config.parallel, nn.conv_choice.mark()
    if pc.distributed:
        initialize_distributed(pc.coordinator_address, pc.num_processes, pc.process_id)
    main_process = jax.process_index() == 0
    say = (lambda line: print(line, file=stream, flush=True)) if main_process else (lambda line: None)
    opening = prepare(config, overwrite=overwrite, resume=resume)
    checkpointer, unchanged = None, "the run directory is unchanged" if opening.had_run else "nothing was written"
    try:
        _stop_if_signalled(guard, unchanged)
        b = _build(config, user_callbacks)
        exp, placement, cadence = b.exp, b.placement, b.cadence
        _stop_if_signalled(guard, unchanged)
        run_dir, checkpointer, restored = open_run(opening, config, b.state, say)
        loop = LoopState() if restored is None else LoopState.from_meta(restored[1])
        ts = b.state if restored is None else restored[0]
        dc = config.data
        progress = Progress(
            cadence.total_steps, config.log.progress if main_process else "none", stream, initial=loop.step,
            batch_size=dc.batch_size,
        )
        resident = _resident_train_data(dc, exp.splits.train, placement)
        fusion = _auto_fusion(config, placement, resident)
        compile_step = functools.partial(_compiled_train_step, config, exp.loss_fn, b.optimizer, placement, b.state_sharding, resident)
        status = StatusFile(run_dir)
        run = _Run(
            config=config,
            exp=exp,
            placement=placement,
            cadence=cadence,
            iterator=data_lib.BatchIterator(exp.splits.train, dc.batch_size, state=loop.data_position, **b.iterator_args),
            schedule=b.schedule,
            run_dir=run_dir,
            checkpointer=checkpointer,
            opening=opening,
            timer=CheckpointTimer(config.checkpoint.every_minutes),
            callbacks=Callbacks(_outputs(config, exp, run_dir, status, progress, b.use_tensorboard), b.user, active=main_process),
            progress=progress,
            status=status,
            say=say,
            train_step=compile_step(1 if fusion else config.loop.fixed_dispatch_size),
            fused_step=compile_step(fusion.k) if fusion else None,
            fusion=fusion,
            eval_step=make_eval_stats_step(exp.loss_fn, metrics_sharding=placement.replicated),
            resident=resident,
            pad=b.pad,
            # Backprop made visible, computed only at log steps, so the train step is untouched.
            stats_fn=jax.jit(layer_stats, static_argnums=(0, 5)) if config.log.layer_stats else None,
            resumed_from=loop.step if restored is not None else None,
            observe=config.optimizer.reduce_on_plateau.observer() if config.optimizer.reduce_on_plateau else None,
            conv_mark=conv_mark,
        )
    except BaseException:
        if checkpointer is not None:
            checkpointer.close()
        opening.abandon()
        raise
    _announce(run, loop)
    return run, ts, loop


class _Built(NamedTuple):
    """What the set-up builds from the config before it opens the run directory."""

    exp: Experiment
    placement: Placement
    pad: bool
    cadence: Cadence
    iterator_args: dict
    optimizer: Any
    schedule: Callable
    state: TrainState  # the initial one, on the devices
    state_sharding: Any
    user: list  # the user's callbacks, the config's first
    use_tensorboard: bool


def _build(config: cfg.Config, user_callbacks: Sequence[Any]) -> _Built:
    """The experiment, its placement, the cadence, the optimizer and the initial train state."""
    pc, dc = config.parallel, config.data
    exp = build_experiment(config)
    _check_early_stopping_metric(config, exp)
    _check_plateau_metric(config, exp)
    user = [*callbacks_from_config(config), *user_callbacks]
    use_tensorboard = tensorboard.wanted(config.log.tensorboard)
    placement = make_placement(pc.num_devices, fsdp=pc.mode == "fsdp")
    pad = exp.loss is not None and _takes_weights(exp.loss)
    _check_divisible(placement, dc, exp.splits.train.num_examples, pad)
    _check_microbatches(placement, config, exp.splits.train.num_examples, pad)
    iterator_args = dict(key=exp.keys["shuffle"], shuffle=dc.shuffle, drop_last=dc.drop_last)
    steps_per_epoch = data_lib.BatchIterator(exp.splits.train, dc.batch_size, **iterator_args).steps_per_epoch
    cadence = Cadence.from_config(config, steps_per_epoch)
    optimizer, schedule = builders.build_optimizer(config.optimizer, cadence.total_steps, exp.params)
    ts = TrainState.create(exp.params, exp.model_state, optimizer, key=exp.keys["step"])
    state_sharding = placement.state_shardings(ts)
    ts = placement.put_state(ts, state_sharding)
    return _Built(exp, placement, pad, cadence, iterator_args, optimizer, schedule, ts, state_sharding, user, use_tensorboard)


def _outputs(config: cfg.Config, exp: Experiment, run_dir: RunDir, status: StatusFile, progress: Progress, use_tensorboard: bool) -> list:
    """The loop's own callbacks: metrics.jsonl first, then the status, TensorBoard and the display."""
    outputs: list = [MetricsFile(run_dir), status]
    if use_tensorboard and run_dir.writer:
        summary = nn.summary(exp.net, _example(exp))
        outputs.append(TensorBoard(run_dir.path, cfg.dump_config(config), cfg.config_to_dict(config), summary))
    return outputs + [progress]


def _example(exp: Experiment) -> jax.ShapeDtypeStruct:
    train = exp.splits.train
    return jax.ShapeDtypeStruct((1, *train.x.shape[1:]), train.x.dtype)




def _announce(run: _Run, loop: LoopState) -> None:
    """The model summary and the run's one-line description."""
    splits, pc, train = run.exp.splits, run.config.parallel, run.exp.splits.train
    group_of = run.config.optimizer.group_of if run.config.optimizer.groups else None
    run.say(nn.summary(run.exp.net, jax.ShapeDtypeStruct((1, *train.x.shape[1:]), train.x.dtype), group_of=group_of))
    run.say(
        f"data: {train.num_examples} train / {splits.val.num_examples if splits.val else 0} val / "
        f"{splits.test.num_examples if splits.test else 0} test examples; "
        f"{run.cadence.total_steps} steps ({run.cadence.steps_per_epoch} per epoch); {run.placement.num_devices} "
        f"device(s) ({pc.mode} parallel, {jax.process_count()} process(es)); output_dir {run.run_dir.path}"
    )
    if run.resumed_from is not None:
        run.say(f"resumed from {run.checkpointer.latest.directory}/{loop.step} (step {loop.step})")
    for note in run.opening.notes:
        run.say(note)
    if run.opening.changes:
        run.say(f"config changed on resume: {config_diff.describe(run.opening.changes)} (recorded in {HISTORY})")


def _run_info(run: _Run, loop: LoopState) -> RunInfo:
    return RunInfo(
        run.config, run.exp.net, run.exp.splits, str(run.run_dir.path), run.cadence.total_steps,
        run.cadence.steps_per_epoch, loop.step,
    )


def _auto_fusion(config: cfg.Config, placement: Placement, resident) -> Optional[AutoFusion]:
    """The timed choice of ``loop.steps_per_dispatch: auto``, where it applies: one process on
    one device with the training split on it. Elsewhere auto means single steps: processes
    must agree on every program, and host batches are prepared ahead by a thread."""
    if config.loop.steps_per_dispatch != "auto" or resident is None or placement.num_devices > 1 or jax.process_count() > 1:
        return None
    k = fused_size(config.log.every_steps)
    return AutoFusion(k) if k > 1 else None


def _compiled_train_step(config, loss_fn, optimizer, placement: Placement, state_sharding, resident, k: int) -> Callable:
    """The jitted train step of dispatches of ``k`` steps, called as ``step(ts, batch_or_rows)``,
    with its guards."""
    step = make_step(
        loss_fn,
        optimizer,
        grad_norm_every_steps=config.log.every_steps if config.log.grad_norm else None,
        accumulate_steps=config.optimizer.accumulate_steps,
    )
    if config.loop.on_nonfinite == "skip":
        step = skipping_nonfinite(step)
    if k > 1:
        step = fused(step)
    batch_sharding = NamedSharding(placement.mesh, P(None, DATA_AXIS)) if k > 1 else placement.batch
    allowed = _batch_size_changed(2 if k > 1 else 1)
    if resident is None:
        jitted = jit_step(step, state_sharding=state_sharding, batch_sharding=batch_sharding)
        return CompileGuard(jitted, "train_step", allowed=allowed)
    # With the training split resident on the device, the step gathers its own batch inside
    # the same dispatch: per step, a transfer of row indices instead of a copy of the batch.
    jitted = jit_step(
        on_rows(step), state_sharding=state_sharding, batch_sharding=batch_sharding, extra_shardings=(placement.replicated,)
    )
    guarded = CompileGuard(jitted, "train_step", allowed=allowed)
    return lambda ts, rows: guarded(ts, rows, resident)


def _check_early_stopping_metric(config: cfg.Config, exp: Experiment) -> None:
    """An unknown ``early_stopping.metric`` is an error before anything trains."""
    if exp.splits.val is None:
        return
    names = metric_names(exp)
    if config.early_stopping.metric not in names:
        raise ConfigError(
            f"early_stopping.metric: {config.early_stopping.metric!r} is not among the val metrics {sorted(names)}"
        )


def _check_plateau_metric(config: cfg.Config, exp: Experiment) -> None:
    """``optimizer.reduce_on_plateau`` needs a val split and one of its metrics."""
    plateau = config.optimizer.reduce_on_plateau
    if plateau is None:
        return
    if exp.splits.val is None:
        raise ConfigError("optimizer.reduce_on_plateau watches a validation metric, but the data has no val split")
    names = metric_names(exp)
    if plateau.metric not in names:
        raise ConfigError(f"optimizer.reduce_on_plateau.metric: {plateau.metric!r} is not among the val metrics {sorted(names)}")


def _check_microbatches(placement: Placement, config: cfg.Config, num_train: int, pad: bool) -> None:
    """Microbatches take rows from every device's block, so N must divide the rows per device,
    and a final partial batch (unpadded) must split too."""
    n, dc = config.optimizer.accumulate_steps, config.data
    per_device = dc.batch_size // placement.num_devices
    if n > 1 and per_device % n:
        raise ConfigError(
            f"optimizer.accumulate_steps ({n}) must divide the {per_device} rows each of the {placement.num_devices} "
            f"devices holds of a batch (data.batch_size {dc.batch_size}); choose a batch size that is a multiple "
            f"of {n * placement.num_devices}"
        )
    partial = num_train % dc.batch_size
    if n > 1 and partial and not pad and not dc.drop_last and partial % (n * placement.num_devices):
        raise ConfigError(
            f"the final partial batch of each epoch ({partial} of {num_train} training examples) does not split into "
            f"optimizer.accumulate_steps ({n}) microbatches; set data.drop_last=true, or use a loss that takes "
            "weights= (every built-in loss does), whose batches are padded"
        )


def _eval_batch_size(config: cfg.Config, multiple: int = 1) -> int:
    """``data.eval_batch_size`` (null: 4 x batch_size), rounded up to a multiple of ``multiple``."""
    size = config.data.eval_batch_size or 4 * config.data.batch_size
    return -(-size // multiple) * multiple


def _takes_weights(loss: Callable) -> bool:
    """Whether ``loss`` accepts ``weights=`` (every built-in loss does), so batches can be padded."""
    try:
        parameters = inspect.signature(loss).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "weights" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _batch_size_changed(lead: int):
    """Whether a new train-step signature only changed the ``lead`` leading axes of the batch
    leaves (the loop's shorter fused dispatches and final partial batches), which is expected."""

    def allowed(old, new) -> bool:
        if old.keys() != new.keys():
            return False
        for path, (dtype, shape) in new.items():
            old_dtype, old_shape = old[path]
            is_batch = path.startswith("[1]")
            if (dtype, shape) != (old_dtype, old_shape) and not (
                is_batch and dtype == old_dtype and shape[lead:] == old_shape[lead:]
            ):
                return False
        return True

    return allowed


def _resident_train_data(dc, train: data_lib.Arrays, placement: Placement):
    """``(x, y)`` of ``train`` placed on every device of the mesh, or None where the data stays
    on the host (``data.on_device``; by default data read from disk, ``RowView`` s, stays there
    whatever its size)."""
    size = train.x.nbytes + train.y.nbytes
    on_disk = data_lib.is_lazy(train.x) or data_lib.is_lazy(train.y)
    if dc.on_device is None:
        on_device = jax.process_count() == 1 and size <= DEVICE_DATA_LIMIT_BYTES and not on_disk
    elif dc.on_device and jax.process_count() > 1:
        raise ConfigError("data.on_device: true needs a single process (each process feeds its own rows); set it to null")
    else:
        on_device = dc.on_device
    if not on_device:
        return None
    # on_device: true for data read from disk reads it whole, as asked.
    return jax.device_put((np.asarray(train.x), np.asarray(train.y)), placement.replicated)


def _check_divisible(placement: Placement, dc, num_train: int, pad: bool) -> None:
    placement.check_batch_size(dc.batch_size, "data.batch_size")
    partial = num_train % dc.batch_size
    if partial and not pad and not dc.drop_last and partial % placement.num_devices:
        raise ConfigError(
            f"the final partial batch of each epoch ({partial} of {num_train} training examples) does not divide "
            f"over {placement.num_devices} devices; set data.drop_last=true or a data.batch_size that divides {num_train}, "
            "or use a loss that takes weights= (every built-in loss does), whose batches are padded"
        )
