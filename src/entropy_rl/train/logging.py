"""Metric sinks: RUN_DIR/metrics.jsonl always, TensorBoard when installed and asked for."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """One JSON object per line, flushed every step, so a crash loses at most the current step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a")  # noqa: SIM115

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._f.write(
            json.dumps(metrics) + "\n"
        )  # an OSError (disk full) ends Trainer.fit in one line
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    @staticmethod
    def truncate_after(path: Path, step: int) -> int:
        """On resume: keep lines with ``step <= step``; lines after it move to ``<name>.orphaned``
        (appended, never deleted). Returns how many lines moved."""
        if not path.exists():
            return 0
        keep: list[str] = []
        moved: list[str] = []
        for line in path.read_text().splitlines():
            try:
                s = json.loads(line).get("step", 0)
            except (json.JSONDecodeError, AttributeError):
                moved.append(line)  # a torn last line from a kill
                continue
            (keep if s <= step else moved).append(line)
        if moved:
            with open(path.with_name(path.name + ".orphaned"), "a") as f:
                f.write("\n".join(moved) + "\n")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
        return len(moved)


def quiet_progress_bars() -> None:
    """Quiet mode (run.progress=false): silence transformers' and huggingface_hub's progress
    bars too (model loading, downloads) for the rest of the process."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    disable_progress_bars()
    hf_logging.disable_progress_bar()


class TensorBoardLogger:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def default_loggers(
    run_dir: Path, names: list[str] | None = None, config: dict[str, Any] | None = None
) -> list[Logger]:
    """``names`` from run.loggers (jsonl is always added); None: jsonl + tensorboard if installed."""
    if names is not None:
        from entropy_rl.integrations.trackers import make_loggers

        return make_loggers(["jsonl", *[n for n in names if n != "jsonl"]], run_dir, config or {})
    loggers: list[Logger] = [JsonlLogger(run_dir / "metrics.jsonl")]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    loggers.append(TensorBoardLogger(run_dir / "tb"))
    return loggers
