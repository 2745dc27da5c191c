"""scripts/bench_input.py: the smoke run prints one Markdown row per workload with positive rates
and ratios, and leaves no data file behind."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_prints_rates_and_ratios(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_input.py"), "--tiny", "--workloads", "W1", "--dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| W1 |")]
    assert len(rows) == 1, done.stdout
    numbers = [float(n.replace(",", "")) for n in re.findall(r"[\d,]+\.?\d*", rows[0].split("|", 2)[2])]
    assert len(numbers) == 5 and all(n > 0 for n in numbers), rows[0]  # 3 rates, 2 ratios
    assert list(tmp_path.iterdir()) == []  # the .npy files were deleted
