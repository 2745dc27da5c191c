"""Runs small digits trainings for tests/test_parallel.py in a fresh process.

    python parallel_worker.py OUT_DIR NUM_STEPS [key=value ...]

Prints the run's train losses as one JSON line (process 0 only).
"""

import io
import json
import sys
from pathlib import Path

import jax

import fntrain as ft

ROOT = Path(__file__).resolve().parent.parent
BASE = [
    "log.progress=none",
    "model.hidden_sizes=[64]",
    "model.dropout_rate=0.1",
    "log.every_steps=5",
    "loop.kind=steps",
    "data.drop_last=true",
    "optimizer.schedule={name: constant}",
]

if __name__ == "__main__":
    out, steps, *overrides = sys.argv[1:]
    resume = "--resume" in overrides
    overrides = [o for o in overrides if o != "--resume"]
    config = ft.load_config(ROOT / "configs/digits_mlp.yaml", BASE + [f"output_dir={out}", f"loop.num_steps={steps}", *overrides])
    result = ft.train(config, overwrite=not resume, resume=resume, stream=io.StringIO())
    if jax.process_index() == 0:
        lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        losses = {r["step"]: r["loss"] for r in lines if r["split"] == "train"}
        print(json.dumps({"losses": losses, "devices": len(result.summary["devices"]), "resumed": result.summary["resumed_from_step"]}))
