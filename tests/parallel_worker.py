"""Runs small digits trainings for tests/test_parallel.py in a fresh process.

    python parallel_worker.py OUT_DIR NUM_STEPS [key=value ...] [--resume] [--plain]

Prints the run's train losses as one JSON line (process 0 only). ``--plain`` trains
configs/digits_mlp.yaml as it ships (NUM_STEPS is then epochs) and reports every logged
loss of every split.
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
    resume, plain = "--resume" in overrides, "--plain" in overrides
    overrides = [o for o in overrides if o not in ("--resume", "--plain")]
    length = [f"loop.num_epochs={steps}"] if plain else BASE + [f"loop.num_steps={steps}"]
    config = ft.load_config(ROOT / "configs/digits_mlp.yaml", length + [f"output_dir={out}", *overrides])
    result = ft.train(config, overwrite=not resume, resume=resume, stream=io.StringIO())
    if jax.process_index() == 0:
        lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        losses = {f"{r['split']}@{r['step']}" if plain else r["step"]: r["loss"] for r in lines if plain or r["split"] == "train"}
        print(json.dumps({"losses": losses, "devices": len(result.summary["devices"]), "resumed": result.summary["resumed_from_step"]}))
