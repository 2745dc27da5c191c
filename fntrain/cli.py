"""The ``fntrain`` command: ``train``, ``eval``, ``gradcheck``, ``tune``, ``plot``, ``runs``, ``predict``, ``export``.

Exit codes: 0 success; 2 a bad config, override, file or data, a run directory that is
in use or not fntrain's, or a file that cannot be written (a full disk, a read-only
directory: fix the cause, then ``--resume``), each as one ``error:`` line on stderr, no
traceback; 3 the loss became NaN/inf (``loop.on_nonfinite: stop``; the last good
checkpoint is kept); 128 + N stopped by signal N (143 for SIGTERM, 130 for SIGINT), after
writing a checkpoint, or during start-up before the first step; resume with ``--resume``.

``train`` installs its SIGTERM/SIGINT handlers first thing, before JAX is imported, so a
signal is honoured from the first instant (see :mod:`fntrain.signals`).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

from fntrain import signals

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like every other fntrain error, instead of argparse's usage block.
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fntrain", description="Train JAX networks from YAML configs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,gradcheck,tune,plot,runs,predict,export}", parser_class=_Parser)

    train = sub.add_parser("train", help="train a config", description="Train the network a YAML config describes.")
    train.add_argument("config", help="the YAML config file")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optimizer.learning_rate=3e-4")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("--overwrite", action="store_true", help="replace a finished or failed run in output_dir")
    train.add_argument(
        "--resume", action="store_true", help="continue from the latest complete checkpoint in output_dir, if any"
    )

    evaluate = sub.add_parser(
        "eval", help="evaluate a trained run", description="Evaluate a run's final parameters on val and test."
    )
    evaluate.add_argument("config", help="the YAML config the run was trained with")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for train")
    evaluate.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    check = sub.add_parser(
        "gradcheck",
        help="check backprop against finite differences",
        description="Compare jax.grad of the configured model and loss with central finite differences "
        "in float64, parameter by parameter; exit 1 above the tolerance.",
    )
    check.add_argument("config", help="the YAML config")
    check.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for train")
    check.add_argument("--examples", type=int, default=4, help="training examples in the batch (default 4)")
    check.add_argument("--tol", type=float, default=1e-6, help="largest relative error that passes (default 1e-6)")
    check.add_argument("--max-elements", type=int, default=20, help="elements checked per parameter (default 20)")
    check.add_argument(
        "--perturb",
        type=float,
        default=0.01,
        help="check at the initial parameters plus N(0, perturb^2) noise, so that zero-initialised biases "
        "do not sit ReLUs exactly on their kink, where finite differences disagree (default 0.01; 0: off)",
    )
    check.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_tune(sub)
    _add_tools(sub)
    _add_model_tools(sub)
    return parser


def _add_tune(sub) -> None:
    tune = sub.add_parser(
        "tune", help="measure the fastest allocator setting for a config",
        description="Train the config briefly under each allocator setting (FNTRAIN_MALLOC tuned, system, hugetlb), "
        "each in a fresh process, and keep the fastest for this machine: `fntrain train` of the config then uses it.",
    )
    tune.add_argument("config", help="the YAML config")
    tune.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for train")
    tune.add_argument("--steps", type=int, default=100, help="training steps per setting (default 100)")
    tune.add_argument("--print-config", action="store_true", help=argparse.SUPPRESS)


def _add_tools(sub) -> None:
    """The ``plot`` and ``runs`` commands: they read run directories, not configs."""
    plot = sub.add_parser(
        "plot", help="plot learning curves", description="Plot the learning curves of one or more runs as a PNG."
    )
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (a run in progress works too)")
    plot.add_argument("-o", "--output", default="curves.png", help="the PNG to write (default curves.png)")
    plot.add_argument("--metrics", default=None, help="comma list of metrics, one panel each (default: all logged)")
    plot.add_argument("--x", default="step", choices=("step", "epoch"), help="the x axis (default step)")
    runs = sub.add_parser(
        "runs", help="list runs and their status", description="One line per run under a folder: status, steps, best metric."
    )
    runs.add_argument("folder", nargs="?", default="runs", help="the folder to look in (default runs)")
    runs.add_argument("--sort", default=None, help="sort by a column: name, status, steps, best, best_step, test, wall_time_s")
    runs.add_argument("--json", action="store_true", help="print JSON rows instead of a table")


def _add_model_tools(sub) -> None:
    """The ``predict`` and ``export`` commands: they use a finished run's network."""
    predict = sub.add_parser(
        "predict", help="predict with a trained run",
        description="Run a finished run's network (evaluation mode) on the rows of a file and write the outputs "
        "(for classifiers also classes and probabilities) to a .npz file.",
    )
    predict.add_argument("run", metavar="RUN_DIR", help="the run directory (its output_dir)")
    predict.add_argument("--input", required=True, metavar="FILE", help="the inputs: .npz, .npy or numeric .csv")
    predict.add_argument("--key", default=None, help="the array of a .npz input (default x, or its only array)")
    predict.add_argument("--output", required=True, metavar="FILE", help="the .npz to write (e.g. preds.npz)")
    predict.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: the run's eval batch size)")
    export = sub.add_parser(
        "export", help="export a trained run with jax.export",
        description="Serialise a finished run's evaluation-mode forward pass, parameters included and the batch "
        "dimension symbolic, with jax.export: jax.export.deserialize(open(FILE, 'rb').read()).call(x).",
    )
    export.add_argument("run", metavar="RUN_DIR", help="the run directory (its output_dir)")
    export.add_argument("-o", "--output", default="model.jaxexport", help="the file to write (default model.jaxexport)")


def _predict(args) -> int:
    from fntrain.prediction import prediction_arrays, read_inputs, write_predictions
    from fntrain.trained import load_run

    run = load_run(args.run)
    x = read_inputs(args.input, key=args.key, input_shape=run.input_shape)
    x = run.check_inputs(x, where=args.input)
    arrays = prediction_arrays(run.predict(x, batch_size=args.batch_size), run.head)
    path = write_predictions(args.output, arrays)
    shapes = ", ".join(f"{name} {list(a.shape)}" for name, a in arrays.items())
    print(f"wrote {path}: {shapes}")
    return 0


def _export(args) -> int:
    from fntrain.exporting import export_run

    done = export_run(args.run, args.output)
    shape = lambda s: f"[{', '.join(map(str, s.shape))}] {s.dtype}"  # noqa: E731
    print(f"wrote {done.path}: {shape(done.input)} -> {shape(done.output)}, platforms {', '.join(done.platforms)}")
    if done.skipped:
        print(f"warning: {done.skipped}; exported for {', '.join(done.platforms)} only", file=sys.stderr)
    return 0


def _plot(args) -> int:
    from fntrain.plot import plot_runs, save_plot

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    warn = lambda message: print(f"warning: {message}", file=sys.stderr)  # noqa: E731
    path = save_plot(plot_runs(args.runs, metrics=metrics, x=args.x, warn=warn), args.output)
    print(f"wrote {path}")
    return 0


def _runs(args) -> int:
    from fntrain.runs import format_table, table

    rows = table(args.folder, sort=args.sort)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _train(args) -> int:
    from fntrain import allocator_choice
    from fntrain.loop import train

    config = _load(args)
    if config is None:
        return 0
    allocator_choice.apply(config, args.argv, may_restart=args.console)
    train(config, overwrite=args.overwrite, resume=True if args.resume else None)
    return 0


def _tune(args) -> int:
    from fntrain import allocator_choice

    if args.steps < 4:
        return _fail(f"--steps must be at least 4, got {args.steps}", EXIT_USAGE)
    config = _load(args)
    if config is None:
        return 0
    rates = allocator_choice.measure(args.config, args.overrides, args.steps, say=print)
    mode, kept = allocator_choice.remember(config, rates)
    where = allocator_choice.tuning.cache_dir()
    if not kept:
        return _fail(f"fastest here: FNTRAIN_MALLOC={mode}, but it could not be kept in {where} (not writable? "
                     "set FNTRAIN_CACHE_DIR, or set FNTRAIN_MALLOC yourself)", EXIT_USAGE)
    print(f"fastest here: FNTRAIN_MALLOC={mode}; `fntrain train {args.config}` will use it on this machine (kept in {where})")
    return 0


def _eval(args) -> int:
    from fntrain.evaluation import evaluate
    from fntrain.experiment import build_experiment
    from fntrain.rundir import RunDir

    config = _load(args)
    if config is None:
        return 0
    exp = build_experiment(config)
    params, model_state = RunDir(config.output_dir).load_params(exp.params, exp.model_state)
    batch_size = config.data.eval_batch_size or 4 * config.data.batch_size
    results = {}
    for split in ("val", "test"):
        arrays = getattr(exp.splits, split)
        if arrays is not None:
            results[split] = evaluate(exp.loss_fn, params, model_state, arrays, batch_size=batch_size)
    print(json.dumps(results, indent=2))
    return 0


def _gradcheck(args) -> int:
    from fntrain.experiment import build_experiment
    from fntrain.gradcheck import format_table, gradcheck, passed

    config = _load(args)
    if config is None:
        return 0
    import jax

    exp = build_experiment(config)
    batch = (exp.splits.train.x[: args.examples], exp.splits.train.y[: args.examples])
    leaves, treedef = jax.tree.flatten(exp.params)
    keys = jax.random.split(jax.random.fold_in(exp.keys["init"], 1), len(leaves))
    params = treedef.unflatten([p + args.perturb * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    rows = gradcheck(exp.loss_fn, params, exp.model_state, batch, max_elements_per_param=args.max_elements)
    print(format_table(rows, tol=args.tol))
    ok = passed(rows, args.tol)
    print(f"{'passed' if ok else 'FAILED'}: {len(rows)} parameters, tolerance {args.tol:g} (relative, float64)")
    return 0 if ok else 1


def _load(args):
    import warnings

    from fntrain.config import dump_config, load_config
    from fntrain.errors import ConfigError
    from fntrain.limits import one_line, shorten

    # A warning while loading (a user's module, say) belongs to the message: it goes into the
    # error line, or becomes one `warning:` line, not Python's two-line form naming our source.
    with warnings.catch_warnings(record=True) as caught:
        try:
            config = load_config(args.config, args.overrides)
        except ConfigError as e:
            if not caught:
                raise
            said = "; ".join(f"{w.category.__name__}: {shorten(str(w.message), 200)}" for w in caught[:3])
            raise ConfigError(f"{e} (warned while loading: {said})") from None
    for w in caught:
        print(f"warning: {one_line(f'{w.category.__name__}: {w.message}', 500)}", file=sys.stderr)
    if args.print_config:
        print(dump_config(config), end="")
        return None
    return config


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fntrain`` console script; returns the exit code."""
    signals.install()  # before anything slow: a signal from now on is a flag train honours
    try:
        return _main(argv)
    finally:
        signals.uninstall()


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    # Overrides may come after options (`train c.yaml --overwrite seed=1`): collect the stragglers.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra and not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    # What `train` restarts itself with, where a measured allocator setting needs it (only when
    # run as the console script: a Python caller's process is never replaced).
    args.argv, args.console = (sys.argv[1:], True) if argv is None else (list(argv), False)
    if args.command != "train":
        signals.uninstall()  # the other commands keep Python's own handling (Ctrl-C interrupts)
    # No folder goes on sys.path here: a config's `module.path:function` names are imported
    # from the config file's folder, after the standard library (fntrain.imports).
    from fntrain.data import DataError
    from fntrain.errors import ConfigError, StorageError
    from fntrain.loop import Interrupted, NonFiniteError
    from fntrain.storage import describe

    try:
        commands = {"train": _train, "eval": _eval, "gradcheck": _gradcheck, "tune": _tune, "plot": _plot, "runs": _runs,
                    "predict": _predict, "export": _export}
        return commands[args.command](args)
    except (ConfigError, DataError) as e:
        message = str(e)
        config = getattr(args, "config", None)
        if config is not None and config not in message and not isinstance(e, StorageError):  # say which config
            message = f"{args.config}: {'data: ' if isinstance(e, DataError) else ''}{message}"
        return _fail(message, EXIT_USAGE)
    except MemoryError:
        where = getattr(args, "config", None) or args.command
        return _fail(f"{where}: ran out of memory building the run (a dataset, batch or model larger than this "
                     "machine holds?)", EXIT_USAGE)
    except (NonFiniteError, Interrupted) as e:
        return _fail(str(e), e.exit_code)
    except OSError as e:  # a filesystem failure fntrain did not describe itself
        return _fail(describe(e, "a file operation failed"), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, code: int) -> int:
    """Prints the one ``error:`` line; collects what a failed write left pending (orbax's
    coroutines would otherwise report their own errors at interpreter shutdown)."""
    from fntrain.limits import one_line

    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    gc.collect()
    return code


if __name__ == "__main__":
    sys.exit(main())
