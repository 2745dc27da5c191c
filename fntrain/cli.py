"""The ``fntrain`` command: ``train``, ``eval``.

Exit codes: 0 success; 2 a bad config, override, file or data (one ``error:`` line
on stderr, no traceback); 3 the loss became NaN/inf (``loop.on_nonfinite: stop``; the
last good checkpoint is kept); 128 + N stopped by signal N after writing a checkpoint
(143 for SIGTERM, 130 for SIGINT; resume with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like every other fntrain error, instead of argparse's usage block.
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fntrain", description="Train JAX networks from YAML configs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,gradcheck}", parser_class=_Parser)

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
    return parser


def _train(args) -> int:
    from fntrain.loop import train

    config = _load(args)
    if config is None:
        return 0
    train(config, overwrite=args.overwrite, resume=True if args.resume else None)
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
    parser = _parser()
    # Overrides may come after options (`train c.yaml --overwrite seed=1`): collect the stragglers.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    # No folder goes on sys.path here: a config's `module.path:function` names are imported
    # from the config file's folder, after the standard library (fntrain.imports).
    from fntrain.data import DataError
    from fntrain.errors import ConfigError
    from fntrain.limits import one_line
    from fntrain.loop import Interrupted, NonFiniteError

    try:
        return {"train": _train, "eval": _eval, "gradcheck": _gradcheck}[args.command](args)
    except (ConfigError, DataError) as e:
        message = str(e)
        if args.config not in message:  # raised after loading: say which config it concerns
            message = f"{args.config}: {'data: ' if isinstance(e, DataError) else ''}{message}"
        print(f"error: {one_line(message)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"error: {one_line(args.config)}: ran out of memory building the run (a dataset, batch or model "
              f"larger than this machine holds?)", file=sys.stderr)
        return EXIT_USAGE
    except (NonFiniteError, Interrupted) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
