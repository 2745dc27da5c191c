"""Runs ``fntrain.cli.main`` on many command lines in one fresh process, under a memory limit.

    python cli_worker.py CASES.json RESULTS.json ADDRESS_SPACE_BYTES

CASES.json holds ``[{"argv": [...], "cwd": "..."}]``. Each case runs in its ``cwd`` with
stdout and stderr captured; RESULTS.json gets ``{"cases": [{"rc", "stderr", "stdout_chars",
"seconds"}], "peak_rss": bytes}`` (``rc`` is ``"raised"`` when an exception escaped ``main``,
with its traceback as stderr). One process for many cases pays JAX's start-up once; the
address-space limit (RLIMIT_AS) makes a case that allocates without bound fail here instead
of taking the machine's memory. ``cli_contract.run_worker`` starts it.

The peak RSS is this process's own high-water mark (``VmHWM``): the ``ru_maxrss`` a parent
reads for a child also counts the parent's memory at the fork.
"""

import contextlib
import io
import json
import os
import resource
import sys
import time
import traceback

MAX_CAPTURED = 20_000  # characters of stderr kept per case


def run_case(case: dict) -> dict:
    from fntrain import cli

    out, err = io.StringIO(), io.StringIO()
    os.chdir(case["cwd"])
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(case["argv"])
        except SystemExit as e:
            rc = e.code
        except BaseException:  # noqa: BLE001 - the contract under test is that nothing escapes
            rc = "raised"
            err.write(traceback.format_exc())
    seconds = time.perf_counter() - start
    return {"rc": rc, "stderr": err.getvalue()[:MAX_CAPTURED], "stdout_chars": len(out.getvalue()), "seconds": seconds}


def main(cases_path: str, results_path: str, limit: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    with open(cases_path) as f:
        cases = json.load(f)
    results = [run_case(case) for case in cases]
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    with open(results_path, "w") as f:
        json.dump({"cases": results, "peak_rss": peak}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
