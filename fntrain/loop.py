"""The outer loop: config in, a trained ``TrainState`` and a run directory out.

The loop is resumable at any step: everything it carries from one step to the
next (train state, data position, the unfinished log window, early-stopping
bookkeeping) goes into each checkpoint, so a resumed run continues exactly as
an uninterrupted one would, bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fntrain import builders
from fntrain import config as cfg
from fntrain import data as data_lib
from fntrain import nn
from fntrain.checkpoint import Checkpointer, param_shapes
from fntrain.errors import ConfigError
from fntrain.guards import CompileGuard, check_donation
from fntrain.layer_grads import layer_stats
from fntrain.parallel import (
    DATA_AXIS,
    Placement,
    gather_to_host,
    initialize_distributed,
    make_placement,
    process_rows,
    to_host,
)
from fntrain.progress import Progress
from fntrain.rundir import RunDir
from fntrain.state import TrainState
from fntrain.step import make_eval_step, make_train_step, supervised_loss

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


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint of the current step was written first."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Experiment(NamedTuple):
    """Everything built from a config before the first step."""

    splits: data_lib.Splits
    net: nn.Module
    loss: Any  # loss(outputs, targets) -> scalar
    loss_fn: Any  # the step's loss_fn(params, model_state, batch, key)
    params: Any
    model_state: Any
    keys: dict[str, jax.Array]


def _keys(seed: int) -> dict[str, jax.Array]:
    names = ("init", "split", "shuffle", "step")
    return dict(zip(names, jax.random.split(jax.random.key(seed), len(names))))


def build_experiment(config: cfg.Config) -> Experiment:
    """Builds data, network and loss, and initialises parameters.

    Raises:
      ConfigError: the data does not fit the network or the loss.
    """
    keys = _keys(config.seed)
    splits = builders.build_data(config.data, seed=config.seed, key=keys["split"])
    num_outputs = builders.infer_num_outputs(splits, config.loss.name)
    net = builders.build_model(config.model, num_outputs, splits.train.x.shape[1:])
    if config.precision != "float32":
        net = nn.mixed_precision(net, config.precision)
    loss = builders.build_loss(config.loss)
    loss_fn = supervised_loss(net, loss)
    x, y = splits.train.x[:2], splits.train.y[:2]
    try:
        params, model_state = net.init(keys["init"], x)
        jax.eval_shape(loss_fn, params, model_state, (x, y), None)
    except (TypeError, ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"the data (inputs {x.shape[1:]} {x.dtype}, targets {y.shape[1:]} {y.dtype}) does not fit "
            f"model {config.model.name!r} with loss {config.loss.name!r}: {detail}"
        ) from None
    if config.log.layer_stats and net.name != "serial":
        raise ConfigError(
            f"log.layer_stats needs a sequential network (fntrain.nn.serial or named_serial, as every built-in "
            f"model is); model {config.model.name!r} is not one"
        )
    return Experiment(splits, net, loss, loss_fn, params, model_state, keys)


def evaluate(
    eval_step, ts: TrainState, arrays: data_lib.Arrays, batch_size: int, placement: Optional[Placement] = None
) -> dict[str, float]:
    """Example-weighted mean metrics over ``arrays``; one host transfer at the end."""
    totals, count = None, 0
    for x, y in data_lib.eval_batches(arrays, batch_size):
        batch = (x, y) if placement is None else placement.put_batch((x, y))
        metrics = eval_step(ts, batch)
        weighted = jax.tree.map(lambda m: m * len(x), metrics)
        totals = weighted if totals is None else jax.tree.map(jnp.add, totals, weighted)
        count += len(x)
    return {k: float(v) / count for k, v in to_host(totals).items()}


# --------------------------------------------------------------------------- host-side loop state


@dataclasses.dataclass
class LoopState:
    """What the loop carries between steps besides the ``TrainState``; saved in each checkpoint.

    Attributes:
      step: steps done.
      data_position: the training iterator's next ``(epoch, offset)``.
      window: metrics since the last log line, one dict per dispatch (device arrays, ``[]``
        or ``[K]`` for fused steps).
      best_step, best_metrics: the evaluation with the best ``early_stopping.metric`` so far.
      evals_without_improvement: evaluations since ``best_step``.
      nonfinite_steps: updates skipped as non-finite (``on_nonfinite: skip``).
      final: the latest metrics per split, for the summary.
    """

    step: int = 0
    data_position: data_lib.IteratorState = data_lib.IteratorState()
    window: list = dataclasses.field(default_factory=list)
    best_step: Optional[int] = None
    best_metrics: Optional[dict] = None
    evals_without_improvement: int = 0
    nonfinite_steps: int = 0
    final: dict = dataclasses.field(default_factory=dict)

    def to_meta(self, params) -> dict:
        columns = _window_columns(self.window)
        return {
            "step": self.step,
            "data_position": self.data_position.to_dict(),
            "window": {k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in columns.items()},
            "best_step": self.best_step,
            "best_metrics": self.best_metrics,
            "evals_without_improvement": self.evals_without_improvement,
            "nonfinite_steps": self.nonfinite_steps,
            "final": self.final,
            "param_shapes": param_shapes(params),
        }

    @classmethod
    def from_meta(cls, meta: dict) -> "LoopState":
        columns = meta["window"]
        window = [{k: jnp.asarray(c["values"], dtype=c["dtype"]) for k, c in columns.items()}] if columns else []
        return cls(
            step=meta["step"],
            data_position=data_lib.IteratorState.from_dict(meta["data_position"]),
            window=window,
            best_step=meta["best_step"],
            best_metrics=meta["best_metrics"],
            evals_without_improvement=meta["evals_without_improvement"],
            nonfinite_steps=meta["nonfinite_steps"],
            final=meta["final"],
        )


def _window_columns(window: list[dict]) -> dict[str, np.ndarray]:
    """The window's metrics on the host, one ``[steps]`` column per metric. The arrays are
    fetched first and joined in NumPy: joining them on the device costs a dispatch per array."""
    host = to_host(window)
    return {k: np.concatenate([np.atleast_1d(m[k]) for m in host]) for k in (host[0] if host else {})}


def _window_means(window: list[dict]) -> dict[str, float]:
    """Means over the window (``nonfinite`` is summed; ``grad_norm`` averages the steps that
    computed it, and is left out if none did); the one host sync between evaluations."""
    means = {}
    for k, v in _window_columns(window).items():
        if k == "nonfinite":
            means[k] = float(v.sum())
        elif k == "grad_norm":
            computed = v[~np.isnan(v)]
            if computed.size:
                means[k] = float(computed.mean())
        else:
            means[k] = float(v.mean())
    return means


def _window_nonfinite(window: list[dict]) -> int:
    return int(_window_columns(window).get("nonfinite", np.zeros(0)).sum())


class _SignalGuard:
    """Turns the first SIGTERM/SIGINT into a flag the loop checks after each step; a second exits at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: Optional[int] = None
        self.previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            print(f"\nsecond {signal.Signals(signum).name}: exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint "
            "(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------- the loop


def train(
    config: cfg.Config,
    *,
    overwrite: bool = False,
    resume: Optional[bool] = None,
    stream: TextIO | None = None,
) -> TrainResult:
    """Trains as the config says, writing the run directory; usable from notebooks.

    Args:
      config: the validated config (``fntrain.load_config``).
      overwrite: replace a run already in ``output_dir``.
      resume: continue from the latest checkpoint in ``output_dir`` if there is one;
        None: ``config.checkpoint.resume``.
      stream: where progress goes (stdout by default).

    Example:
      >>> config = fntrain.load_config("configs/digits_mlp.yaml", ["loop.num_epochs=2"])
      >>> result = fntrain.train(config, overwrite=True)
      >>> result.metrics["val"]["accuracy"]

    Raises:
      ConfigError: a bad config or data (nothing is written in that case).
      NonFiniteError: the loss diverged (``loop.on_nonfinite: stop``); the last good
        checkpoint is intact.
      Interrupted: SIGTERM/SIGINT; a checkpoint of the current step was written.
    """
    stream = stream or sys.stdout
    resume = config.checkpoint.resume if resume is None else resume
    pc = config.parallel
    if pc.distributed:
        initialize_distributed(pc.coordinator_address, pc.num_processes, pc.process_id)
    main_process = jax.process_index() == 0
    exp = build_experiment(config)
    dc, loop, es = config.data, config.loop, config.early_stopping
    placement = make_placement(pc.num_devices, fsdp=pc.mode == "fsdp")
    _check_divisible(placement, dc, exp.splits.train.num_examples)
    iterator_args = dict(key=exp.keys["shuffle"], shuffle=dc.shuffle, drop_last=dc.drop_last)
    steps_per_epoch = data_lib.BatchIterator(exp.splits.train, dc.batch_size, **iterator_args).steps_per_epoch
    total_steps = loop.num_epochs * steps_per_epoch if loop.kind == "epochs" else loop.num_steps
    optimizer, schedule = builders.build_optimizer(config.optimizer, total_steps)
    eval_batch_size = dc.eval_batch_size or 4 * dc.batch_size
    track_best = exp.splits.val is not None and (config.checkpoint.keep_best or es.patience is not None)

    ts = TrainState.create(exp.params, exp.model_state, optimizer, key=exp.keys["step"])
    state_sharding = placement.state_shardings(ts)
    ts = placement.put_state(ts, state_sharding)
    run, checkpointer, restored = _open_run(config, ts, overwrite=overwrite, resume=resume)
    lstate = LoopState() if restored is None else LoopState.from_meta(restored[1])
    if restored is not None:
        ts = restored[0]
        run.truncate_metrics(lstate.step)
    iterator = data_lib.BatchIterator(exp.splits.train, dc.batch_size, state=lstate.data_position, **iterator_args)

    x_example = jax.ShapeDtypeStruct((1, *exp.splits.train.x.shape[1:]), exp.splits.train.x.dtype)
    say = (lambda line: print(line, file=stream, flush=True)) if main_process else (lambda line: None)
    say(nn.summary(exp.net, x_example))
    say(
        f"data: {exp.splits.train.num_examples} train / "
        f"{exp.splits.val.num_examples if exp.splits.val else 0} val / "
        f"{exp.splits.test.num_examples if exp.splits.test else 0} test examples; "
        f"{total_steps} steps ({steps_per_epoch} per epoch); {placement.num_devices} device(s) "
        f"({pc.mode} parallel, {jax.process_count()} process(es)); output_dir {run.path}"
    )
    if restored is not None:
        say(f"resumed from {checkpointer.latest.directory}/{lstate.step} (step {lstate.step})")

    throttle = placement.num_devices > 1 and jax.devices()[0].platform == "cpu"
    fused = loop.steps_per_dispatch > 1
    batch_sharding = NamedSharding(placement.mesh, P(None, DATA_AXIS)) if fused else placement.batch
    step_options = dict(
        steps_per_dispatch=loop.steps_per_dispatch,
        grad_norm_every_steps=config.log.every_steps if config.log.grad_norm else None,
        skip_nonfinite=loop.on_nonfinite == "skip",
    )
    allowed = _batch_size_changed(2 if fused else 1)
    # With the training split resident on the device, the step gathers its own batch inside
    # the same dispatch: per step, a transfer of row indices instead of a copy of the batch.
    resident = _resident_train_data(dc, exp.splits.train, placement)
    if resident is None:
        step_fn = make_train_step(
            exp.loss_fn, optimizer, **step_options, state_sharding=state_sharding, batch_sharding=batch_sharding
        )
        train_step = CompileGuard(step_fn, "train_step", allowed=allowed)
    else:
        # The shardings go on the outer jit: nested in it, a step jitted with its own shardings ran 8% slower.
        step_fn = make_train_step(exp.loss_fn, optimizer, **step_options)
        step_on_rows = CompileGuard(
            jax.jit(
                lambda ts, rows, data: step_fn(ts, _take(data, rows)),
                in_shardings=(state_sharding, batch_sharding, placement.replicated),
                out_shardings=(state_sharding, placement.replicated),
                donate_argnums=0,
            ),
            "train_step",
            allowed=allowed,
        )
        train_step = lambda ts, rows: step_on_rows(ts, rows, resident)  # noqa: E731
    eval_step = make_eval_step(exp.loss_fn, metrics_sharding=placement.replicated)
    # Backprop made visible, computed only at log steps, so the train step is untouched.
    stats_fn = jax.jit(layer_stats, static_argnums=(0, 5)) if config.log.layer_stats else None
    progress = Progress(total_steps, config.log.progress if main_process else "none", stream, initial=lstate.step)

    def run_eval(split: str) -> dict[str, float]:
        arrays = exp.splits.val if split == "val" else exp.splits.test
        metrics = evaluate(eval_step, ts, arrays, eval_batch_size, placement)
        run.log(lstate.step, split, {"epoch": lstate.step / steps_per_epoch, **metrics})
        progress.write(f"{split} @ step {lstate.step}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        lstate.final[split] = metrics
        return metrics

    def check_finite(first_step: int) -> None:
        if loop.on_nonfinite == "stop" and _window_nonfinite(lstate.window):
            last = checkpointer.latest_step()
            where = f"{checkpointer.latest.directory}/{last} (step {last})" if last is not None else "none was written"
            raise NonFiniteError(
                f"the loss or gradients became NaN/inf between steps {first_step} and {lstate.step}; "
                f"the last good checkpoint is {where}. Lower optimizer.learning_rate, set "
                "optimizer.clip_grad_norm, or set loop.on_nonfinite=skip"
            )

    def is_event(step: int) -> bool:
        """Whether the loop must stop dispatching after ``step`` to log, evaluate or checkpoint."""
        every = (config.log.every_steps, loop.eval_every_steps, config.checkpoint.every_steps)
        epoch_end = loop.kind == "epochs" and step % steps_per_epoch == 0
        return step == total_steps or epoch_end or any(n and step % n == 0 for n in every)

    def next_dispatch(step: int):
        """Takes the batches of the next dispatch: up to K steps, never across an event
        or a partial batch; returns (steps, device batch, data position after them)."""
        count = 1
        while count < loop.steps_per_dispatch and not is_event(step + count):
            count += 1
        count = max(1, min(count, iterator.full_batches_left))
        if resident is not None:  # the step takes row indices: [K, B] fused, else [B]
            rows = np.stack([iterator.next_indices() for _ in range(count)]).astype(np.int32)
            return count, (rows if fused else rows[0]), iterator.state
        batches = [next(iterator) for _ in range(count)]
        batch = jax.tree.map(lambda *b: np.stack(b), *batches) if fused else batches[0]
        local = jax.tree.map(lambda a: _rows_of_process(a, fused), batch)
        return count, placement.global_batch(local), iterator.state

    start_step = lstate.step
    window_start, window_examples, examples = time.perf_counter(), 0, 0
    steady_examples, steady_seconds, first_window = 0, 0.0, True  # the first window pays for compilation
    start, eval_seconds = time.perf_counter(), 0.0
    stopped_early = False
    pending = next_dispatch(lstate.step) if lstate.step < total_steps else None
    with _SignalGuard() as guard:
        while pending is not None and not stopped_early:
            count, batch, position = pending
            previous, (ts, metrics) = ts, train_step(ts, batch)
            if lstate.step == start_step:
                check_donation(previous, "train_step")
            lstate.step += count
            step = lstate.step
            # Prepared while the device runs this dispatch (double buffering).
            pending = next_dispatch(step) if step < total_steps else None
            lstate.window.append(metrics)
            lstate.data_position = position
            if throttle:
                # Simulated CPU devices share the host's cores; a deep queue of collective programs
                # can starve one device thread past XLA's 40 s rendezvous limit. One step in flight.
                jax.block_until_ready(metrics)
            window_examples += count * jax.tree.leaves(batch)[0].shape[1 if fused else 0]
            progress.advance(count)

            if step % config.log.every_steps == 0 or step == total_steps:
                check_finite(step - _window_steps(lstate.window) + 1)
                values = _window_means(lstate.window)
                lstate.nonfinite_steps += int(values.pop("nonfinite"))
                values["nonfinite_steps"] = lstate.nonfinite_steps
                values["learning_rate"] = float(schedule(step - 1))
                if stats_fn is not None:
                    last = jax.tree.map(lambda a: a[-1], batch) if fused else batch
                    x, y = last if resident is None else _take(resident, last)
                    stats = to_host(stats_fn(exp.net, ts.params, ts.model_state, x, y, exp.loss))
                    values.update({f"layers/{k}": float(v) for k, v in stats.items() if k != "loss"})
                elapsed = time.perf_counter() - window_start
                rate = window_examples / max(elapsed, 1e-9)
                if not first_window:
                    steady_examples, steady_seconds = steady_examples + window_examples, steady_seconds + elapsed
                first_window = False
                run.log(step, "train", {"epoch": step / steps_per_epoch, **values})
                progress.report(step, {k: values[k] for k in ("loss", "accuracy") if k in values}, rate)
                lstate.final["train"] = values
                examples += window_examples
                lstate.window, window_start, window_examples = [], time.perf_counter(), 0

            epoch_end = loop.kind == "epochs" and step % steps_per_epoch == 0
            eval_due = (loop.eval_every_steps and step % loop.eval_every_steps == 0) or (
                epoch_end and loop.eval_every_epochs and (step // steps_per_epoch) % loop.eval_every_epochs == 0
            )
            if exp.splits.val is not None and (eval_due or step == total_steps):
                t = time.perf_counter()
                metrics = run_eval("val")
                if es.metric not in metrics:
                    raise ConfigError(f"early_stopping.metric {es.metric!r} is not among the val metrics {sorted(metrics)}")
                best = None if lstate.best_metrics is None else lstate.best_metrics[es.metric]
                sign = 1.0 if es.mode == "min" else -1.0
                if best is None or sign * (best - metrics[es.metric]) > es.min_delta:
                    lstate.best_step, lstate.best_metrics, lstate.evals_without_improvement = step, metrics, 0
                    if track_best:
                        check_finite(step - _window_steps(lstate.window) + 1)
                        checkpointer.save(ts, lstate.to_meta(ts.params), best=True)
                else:
                    lstate.evals_without_improvement += 1
                    stopped_early = es.patience is not None and lstate.evals_without_improvement >= es.patience
                    if stopped_early:
                        progress.write(
                            f"early stopping at step {step}: val {es.metric} has not improved for "
                            f"{es.patience} evaluations (best {best:.4f} at step {lstate.best_step})"
                        )
                eval_seconds += time.perf_counter() - t
                window_start += time.perf_counter() - t

            every = config.checkpoint.every_steps
            if (every and step % every == 0) or step == total_steps or stopped_early or guard.received:
                check_finite(step - _window_steps(lstate.window) + 1)
                checkpointer.save(ts, lstate.to_meta(ts.params))
            if guard.received:
                progress.close()
                name = signal.Signals(guard.received).name
                raise Interrupted(
                    f"stopped by {name} at step {step}; checkpoint written to {checkpointer.latest.directory}/{step}; "
                    "continue with: fntrain train CONFIG --resume",
                    guard.received,
                )
    train_seconds = time.perf_counter() - start - eval_seconds

    if track_best and es.restore_best and lstate.best_step is not None and lstate.best_step != lstate.step:
        ts, _ = checkpointer.restore_best(ts)
        lstate.final["val"] = lstate.best_metrics
        progress.write(f"restored the best parameters (step {lstate.best_step}, val {es.metric} {lstate.best_metrics[es.metric]:.4f})")
    if exp.splits.test is not None:
        run_eval("test")
    progress.close()
    checkpointer.close()

    run.save_params(*gather_to_host((ts.params, ts.model_state)))
    summary = {
        "steps": lstate.step,
        "epochs": lstate.step / steps_per_epoch,
        "final": lstate.final,
        "best": {"step": lstate.best_step, "val": lstate.best_metrics} if lstate.best_step is not None else None,
        "stopped_early": stopped_early,
        "nonfinite_steps": lstate.nonfinite_steps,
        "resumed_from_step": start_step if restored is not None else None,
        "wall_time_s": time.perf_counter() - start,
        "train_time_s": train_seconds,
        "examples_per_second": examples / max(train_seconds, 1e-9),
        "steady_examples_per_second": steady_examples / steady_seconds if steady_seconds else None,
        "num_params": nn.count_params(ts.params),
        "devices": [str(d) for d in placement.mesh.devices.flat],
        "processes": jax.process_count(),
    }
    run.write_summary(summary)
    for split, values in lstate.final.items():
        say(f"final {split}: " + " ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return TrainResult(ts, lstate.final, summary, str(run.path))


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


def _take(data, rows):
    """The batch ``(x[rows], y[rows])`` of ``data = (x, y)``; rows ``[B]`` or ``[K, B]`` int32."""
    return jax.tree.map(lambda a: a[rows], data)


def _resident_train_data(dc, train: data_lib.Arrays, placement: Placement):
    """``(x, y)`` of ``train`` placed on every device of the mesh, or None where the data stays
    on the host (``data.on_device``)."""
    size = train.x.nbytes + train.y.nbytes
    if dc.on_device is None:
        on_device = jax.process_count() == 1 and size <= DEVICE_DATA_LIMIT_BYTES
    elif dc.on_device and jax.process_count() > 1:
        raise ConfigError("data.on_device: true needs a single process (each process feeds its own rows); set it to null")
    else:
        on_device = dc.on_device
    return jax.device_put((train.x, train.y), placement.replicated) if on_device else None


def _window_steps(window: list[dict]) -> int:
    return sum(int(np.size(m["loss"])) for m in window)


def _rows_of_process(a: np.ndarray, fused: bool) -> np.ndarray:
    """This process's rows of a global batch leaf (axis 1 when fused steps stack ``[K, B, ...]``)."""
    if not fused:
        return process_rows(a)
    return np.swapaxes(process_rows(np.swapaxes(a, 0, 1)), 0, 1)


def _check_divisible(placement: Placement, dc, num_train: int) -> None:
    placement.check_batch_size(dc.batch_size, "data.batch_size")
    partial = num_train % dc.batch_size
    if partial and not dc.drop_last and partial % placement.num_devices:
        raise ConfigError(
            f"the final partial batch of each epoch ({partial} of {num_train} training examples) does not divide "
            f"over {placement.num_devices} devices; set data.drop_last=true or a data.batch_size that divides {num_train}"
        )


def _open_run(config: cfg.Config, ts: TrainState, *, overwrite: bool, resume: bool):
    """Creates the run directory, or reopens it and restores the latest checkpoint when resuming."""
    path = Path(config.output_dir)
    if resume and not overwrite and (path / "checkpoints").exists():
        checkpointer = Checkpointer(path, config.checkpoint.keep)
        restored = checkpointer.restore_latest(ts)
        if restored is not None:
            return RunDir.reopen(path, config), checkpointer, restored
        checkpointer.close()
    run = RunDir.create(path, config, overwrite=overwrite, resume_hint=not resume)
    return run, Checkpointer(path, config.checkpoint.keep), None
