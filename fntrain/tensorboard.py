"""TensorBoard event files of a run, written by a callback of the loop (tensorboardX, no TensorFlow).

Under ``<output_dir>/tensorboard/``: every value written to ``metrics.jsonl`` as a scalar
``split/metric`` at its step, the resolved config as text and as hyperparameters with the
final metrics (the HParams dashboard), and the model summary as text.

``metrics.jsonl`` is the record; the event files are a view of it. A resumed run first
writes them afresh from the lines ``metrics.jsonl`` kept (those up to the checkpoint), so
its curves continue with no duplicate or backward steps, whatever the killed run had
written past its checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from fntrain.errors import ConfigError

DIRECTORY = "tensorboard"


def available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def wanted(setting: Optional[bool]) -> bool:
    """``log.tensorboard``: True needs the writer; None means "if it is installed"."""
    if setting and not available():
        raise ConfigError("log.tensorboard: true needs tensorboardX (pip install tensorboardX), or set it to null or false")
    return available() if setting is None else setting


def _hparams(config_dict: dict, prefix: str = "") -> dict[str, Any]:
    """The config's scalar values by dotted key (lists and mappings as text)."""
    out = {}
    for key, value in config_dict.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is not None:
            out[name] = json.dumps(value)
    return out


class TensorBoard:
    """Writes the run's event files (see the module docstring).

    Args:
      output_dir: the run directory.
      config_text: the resolved config as YAML.
      config_dict: the same as a plain dict, for the hyperparameters.
      model_summary: the model's summary table.
    """

    def __init__(self, output_dir: str | Path, config_text: str, config_dict: dict, model_summary: str):
        self.directory = Path(output_dir) / DIRECTORY
        self.config_text, self.config_dict, self.model_summary = config_text, config_dict, model_summary
        self.writer = None

    def on_train_start(self, run) -> None:
        from tensorboardX import SummaryWriter

        if self.directory.is_symlink():
            raise ConfigError(f"{self.directory} is a symbolic link; fntrain does not follow it to delete event files")
        shutil.rmtree(self.directory, ignore_errors=True)  # rebuilt from metrics.jsonl below
        self.writer = SummaryWriter(str(self.directory), flush_secs=30)
        metrics_file = Path(run.output_dir) / "metrics.jsonl"
        if run.start_step and metrics_file.exists():
            for line in metrics_file.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                self.on_log(record.pop("step"), record.pop("split"), record)
        self.writer.add_text("config", "```yaml\n" + self.config_text + "```", 0)
        self.writer.add_text("model", "```\n" + self.model_summary + "\n```", 0)

    def on_log(self, step: int, split: str, metrics: dict) -> None:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def on_checkpoint(self, step: int, path: str) -> None:
        self.writer.flush()  # what is checkpointed is on disk too

    def on_train_end(self, result) -> None:
        final = {
            f"hparams/{split}/{name}": value
            for split, values in result.metrics.items()
            for name, value in values.items()
            if isinstance(value, (int, float))
        }
        self.writer.add_hparams(_hparams(self.config_dict), final, name="hparams", global_step=int(result.summary["steps"]))
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
