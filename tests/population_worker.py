"""Trains a population for tests/test_population.py in a fresh process (so that a test can give it
several simulated CPU devices through XLA_FLAGS).

    python population_worker.py CONFIG OUT_DIR [key=value ...]

Prints the summary's device list as one JSON line.
"""

import io
import json
import sys

import fntrain as ft

if __name__ == "__main__":
    config_path, out, *overrides = sys.argv[1:]
    result = ft.train(ft.load_config(config_path, [f"output_dir={out}", *overrides]), overwrite=True, stream=io.StringIO())
    print(json.dumps(result.summary["devices"]))
