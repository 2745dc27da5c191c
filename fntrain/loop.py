"""The outer loop: config in, a trained ``TrainState`` and a run directory out."""

from __future__ import annotations

import sys
import time
from typing import Any, NamedTuple, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from fntrain import builders
from fntrain import config as cfg
from fntrain import data as data_lib
from fntrain import nn
from fntrain.errors import ConfigError
from fntrain.progress import Progress
from fntrain.rundir import RunDir
from fntrain.state import TrainState
from fntrain.step import make_eval_step, make_train_step, supervised_loss


class TrainResult(NamedTuple):
    """What ``train`` returns.

    Attributes:
      state: the final ``TrainState``.
      metrics: final metrics per split, e.g. ``{"val": {"loss": ..., "accuracy": ...}}``.
      summary: the contents of ``summary.json``.
      output_dir: the run directory.
    """

    state: TrainState
    metrics: dict[str, dict[str, float]]
    summary: dict[str, Any]
    output_dir: str


class Experiment(NamedTuple):
    """Everything built from a config before the first step."""

    splits: data_lib.Splits
    net: nn.Module
    loss_fn: Any
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
    net = builders.build_model(config.model, builders.infer_num_outputs(splits, config.loss.name))
    loss_fn = supervised_loss(net, builders.build_loss(config.loss))
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
    return Experiment(splits, net, loss_fn, params, model_state, keys)


def evaluate(eval_step, ts: TrainState, arrays: data_lib.Arrays, batch_size: int) -> dict[str, float]:
    """Example-weighted mean metrics over ``arrays``; one host transfer at the end."""
    totals, count = None, 0
    for x, y in data_lib.eval_batches(arrays, batch_size):
        metrics = eval_step(ts, (x, y))
        weighted = jax.tree.map(lambda m: m * len(x), metrics)
        totals = weighted if totals is None else jax.tree.map(jnp.add, totals, weighted)
        count += len(x)
    return {k: float(v) / count for k, v in jax.device_get(totals).items()}


def _mean_metrics(window: list[dict]) -> dict[str, float]:
    stacked = jax.device_get(jax.tree.map(lambda *ms: jnp.mean(jnp.stack(ms)), *window))
    return {k: float(v) for k, v in stacked.items()}


def train(config: cfg.Config, *, overwrite: bool = False, stream: TextIO | None = None) -> TrainResult:
    """Trains as the config says, writing the run directory; usable from notebooks.

    Example:
      >>> config = fntrain.load_config("configs/digits_mlp.yaml", ["loop.num_epochs=2"])
      >>> result = fntrain.train(config, overwrite=True)
      >>> result.metrics["val"]["accuracy"]

    Raises:
      ConfigError: a bad config or data (nothing is written in that case).
    """
    stream = stream or sys.stdout
    exp = build_experiment(config)
    dc, loop = config.data, config.loop
    iterator = data_lib.BatchIterator(
        exp.splits.train, dc.batch_size, key=exp.keys["shuffle"], shuffle=dc.shuffle, drop_last=dc.drop_last
    )
    steps_per_epoch = iterator.steps_per_epoch
    total_steps = loop.num_epochs * steps_per_epoch if loop.kind == "epochs" else loop.num_steps
    optimizer, schedule = builders.build_optimizer(config.optimizer, total_steps)
    eval_batch_size = dc.eval_batch_size or 4 * dc.batch_size

    run = RunDir.create(config.output_dir, config, overwrite=overwrite)
    x_example = jax.ShapeDtypeStruct((1, *exp.splits.train.x.shape[1:]), exp.splits.train.x.dtype)
    print(nn.summary(exp.net, x_example), file=stream, flush=True)
    print(
        f"data: {exp.splits.train.num_examples} train / "
        f"{exp.splits.val.num_examples if exp.splits.val else 0} val / "
        f"{exp.splits.test.num_examples if exp.splits.test else 0} test examples; "
        f"{total_steps} steps ({steps_per_epoch} per epoch); output_dir {run.path}",
        file=stream,
        flush=True,
    )

    ts = TrainState.create(exp.params, exp.model_state, optimizer, key=exp.keys["step"])
    train_step = make_train_step(exp.loss_fn, optimizer)
    eval_step = make_eval_step(exp.loss_fn)
    progress = Progress(total_steps, config.log.progress, stream)

    def run_eval(step: int, split: str) -> dict[str, float]:
        arrays = exp.splits.val if split == "val" else exp.splits.test
        metrics = evaluate(eval_step, ts, arrays, eval_batch_size)
        run.log(step, split, {"epoch": step / steps_per_epoch, **metrics})
        progress.write(f"{split} @ step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    final: dict[str, dict[str, float]] = {}
    window: list[dict] = []
    window_start, window_examples, examples = time.perf_counter(), 0, 0
    start = time.perf_counter()
    eval_seconds = 0.0
    for step in range(1, total_steps + 1):
        batch = next(iterator)
        ts, metrics = train_step(ts, batch)
        window.append(metrics)
        window_examples += len(batch[1])
        progress.advance()
        if step % config.log.every_steps == 0 or step == total_steps:
            values = _mean_metrics(window)  # the only host sync between evaluations
            elapsed = time.perf_counter() - window_start
            rate = window_examples / max(elapsed, 1e-9)
            values["learning_rate"] = float(schedule(step - 1))
            run.log(step, "train", {"epoch": step / steps_per_epoch, **values})
            progress.report(step, {k: values[k] for k in ("loss", "accuracy") if k in values}, rate)
            final["train"] = values
            examples += window_examples
            window, window_start, window_examples = [], time.perf_counter(), 0
        epoch_end = loop.kind == "epochs" and step % steps_per_epoch == 0
        eval_due = (loop.eval_every_steps and step % loop.eval_every_steps == 0) or (
            epoch_end and loop.eval_every_epochs and (step // steps_per_epoch) % loop.eval_every_epochs == 0
        )
        if exp.splits.val is not None and (eval_due or step == total_steps):
            t = time.perf_counter()
            final["val"] = run_eval(step, "val")
            eval_seconds += time.perf_counter() - t
            window_start += time.perf_counter() - t
    train_seconds = time.perf_counter() - start - eval_seconds
    if exp.splits.test is not None:
        final["test"] = run_eval(total_steps, "test")
    progress.close()

    run.save_params(ts.params, ts.model_state)
    summary = {
        "steps": total_steps,
        "epochs": total_steps / steps_per_epoch,
        "final": final,
        "wall_time_s": time.perf_counter() - start,
        "train_time_s": train_seconds,
        "examples_per_second": examples / max(train_seconds, 1e-9),
        "num_params": nn.count_params(ts.params),
        "devices": [str(d) for d in jax.devices()],
    }
    run.write_summary(summary)
    for split, values in final.items():
        print(f"final {split}: " + " ".join(f"{k} {v:.4f}" for k, v in values.items()), file=stream, flush=True)
    return TrainResult(ts, final, summary, str(run.path))
