"""Metric sinks, all in one place: ``log(step, metrics)`` and ``close()`` behind one protocol.

``RUN_DIR/metrics.jsonl`` is always written (the report and resume read it). The others are
chosen with the config key ``run.loggers`` and built by ``make_loggers(names, run_dir, config)``:
``jsonl``, ``tensorboard`` (``RUN_DIR/tb``; extra ``entropy-rl[tensorboard]``), ``wandb``
(``pip install wandb``) and ``mlflow`` (``pip install mlflow``). Each tracker's package is
imported only when its logger is built; a missing one raises MissingExtraError (an ImportError)
naming the install.

Only finite numbers go to the trackers (a NaN bucket such as ``entropy/pos_3`` on a short batch
is skipped, not sent as a broken point); ``metrics.jsonl`` keeps every value. Metric names are
ours (the metrics page of the docs); MLflow allows only ``[A-Za-z0-9_-. /]`` in names, so there
``@`` becomes ``_at_`` (``eval/pass@4`` -> ``eval/pass_at_4``) and any other character ``_``.

The terminal's view of the same metrics, the tqdm bar of ``Trainer.fit``, is `ProgressBar`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from entropy_rl.errors import MissingExtraError

__all__ = [
    "LOGGER_NAMES",
    "JsonlLogger",
    "Logger",
    "MLflowLogger",
    "ProgressBar",
    "TensorBoardLogger",
    "WandbLogger",
    "append_lines",
    "default_loggers",
    "make_loggers",
    "mlflow_key",
]

LOGGER_NAMES = ("jsonl", "tensorboard", "wandb", "mlflow")


class Logger(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _append(fd: int, data: bytes, path: Path) -> None:
    """Append ``data`` to the file open as ``fd``, whole or not at all: a write that fails part
    way (disk full) is cut back off, so the file never ends in a torn line, and the OSError is
    raised (Trainer.fit makes ENOSPC one line)."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        done = 0
        while done < len(data):  # a regular file writes short only when the disk fills
            done += os.write(fd, data[done:])
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        e.filename = e.filename or str(path)  # the one-line error names the file
        raise


def append_lines(path: Path, lines: list[str], *, fsync: bool = False) -> None:
    """Append ``lines`` (each without its newline) to ``path`` in one write, whole or not at all."""
    if not lines:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _append(fd, "".join(line + "\n" for line in lines).encode(), path)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


class JsonlLogger:
    """One JSON object per line, written whole (never a torn line, even on a full disk) and
    fsynced every step, so a crash loses at most the current step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: log() after close()")
        _append(self._fd, (json.dumps(metrics) + "\n").encode(), self.path)
        os.fsync(self._fd)

    def close(self) -> None:  # nothing buffered: closing cannot fail on a full disk
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def truncate_after(path: Path, step: int) -> int:
        """On resume: keep lines with ``step <= step``; lines after it move to ``<name>.orphaned``
        (appended, never deleted). Returns how many lines moved."""
        if not path.exists():
            return 0
        keep: list[str] = []
        moved: list[str] = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                s = json.loads(line).get("step", 0)
            except (json.JSONDecodeError, AttributeError):
                moved.append(line)  # a torn last line from a kill
                continue
            if not isinstance(s, int) or isinstance(s, bool):  # not a row we wrote
                moved.append(line)
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


class ProgressBar:
    """The tqdm bar of Trainer.fit (reward, accuracy, entropy after each step); a no-op when
    disabled or when tqdm is not installed."""

    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
            except ImportError:
                warnings.warn("tqdm not installed: no progress bar", stacklevel=2)

    def update(self, m: dict[str, float]) -> None:
        if self.bar is None:
            return
        post = {
            "reward": m.get("reward/mean"),
            "acc": m.get("acc/train"),
            "H": m.get("entropy/mean"),
        }
        if "acc/eval" in m:
            post["eval"] = m["acc/eval"]
        self.bar.set_postfix(
            {k: f"{v:.3f}" for k, v in post.items() if v is not None}, refresh=False
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoardLogger:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in _finite(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are finite numbers, as floats (``step`` excluded)."""
    out = {}
    for k, v in metrics.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def _run_name(config: Mapping[str, Any], run_dir: Path) -> str:
    run = config.get("run")
    name = run.get("name") if isinstance(run, Mapping) else config.get("name")
    return str(name) if name else run_dir.name


class WandbLogger:
    """Weights & Biases: one wandb run per RL run, ``log(step, metrics)`` at ``step``.

    Args:
        run_dir: the RL run directory; wandb writes its files under it.
        config: the resolved config, recorded as the wandb run's config.
        project: wandb project (default: ``$WANDB_PROJECT``, else ``entropy-rl``).
        name: run name (default: ``run.name`` of the config, else the directory name).
        **init_kwargs: passed to ``wandb.init`` (entity, tags, mode="offline", ...).
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: Mapping[str, Any] | None = None,
        *,
        project: str | None = None,
        name: str | None = None,
        **init_kwargs: Any,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise MissingExtraError(
                "the wandb logger needs wandb: pip install 'entropy-rl[wandb]'"
            ) from exc
        run_dir = Path(run_dir)
        cfg = dict(config or {})
        self.run = wandb.init(
            project=project or os.environ.get("WANDB_PROJECT") or "entropy-rl",
            name=name or _run_name(cfg, run_dir),
            dir=str(run_dir),
            config=cfg,
            **init_kwargs,
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(_finite(metrics), step=int(step))

    def close(self) -> None:
        self.run.finish()


_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(key: str) -> str:
    """Our metric name as MLflow accepts it: ``@`` -> ``_at_``, other disallowed chars -> ``_``."""
    return _MLFLOW_BAD.sub("_", key.replace("@", "_at_"))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= _flatten(v, key + ".")
        else:
            out[mlflow_key(key)] = str(v)[:500]  # MLflow's limit on a param value
    return out


class MLflowLogger:
    """MLflow: one MLflow run per RL run; the config is logged as (flattened) params.

    The tracking URI is ``$MLFLOW_TRACKING_URI`` when set, else ``tracking_uri``, else a file
    store in ``RUN_DIR/mlruns``, so a run's tracking data stays beside its metrics.

    Args:
        run_dir: the RL run directory.
        config: the resolved config (flattened to ``section.key`` params).
        experiment: MLflow experiment name (default ``entropy-rl``).
        name: run name (default: ``run.name`` of the config, else the directory name).
        tracking_uri: where to track when ``$MLFLOW_TRACKING_URI`` is unset.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: Mapping[str, Any] | None = None,
        *,
        experiment: str = "entropy-rl",
        name: str | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        try:
            import mlflow
        except ImportError as exc:
            raise MissingExtraError(
                "the mlflow logger needs mlflow: pip install 'entropy-rl[mlflow]'"
            ) from exc
        run_dir = Path(run_dir)
        cfg = dict(config or {})
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(tracking_uri or (run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(experiment)
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name or _run_name(cfg, run_dir))
        params = _flatten(cfg)
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(items[i : i + 100]))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        values = {mlflow_key(k): v for k, v in _finite(metrics).items()}
        if values:
            self.mlflow.log_metrics(values, step=int(step))

    def close(self) -> None:
        self.mlflow.end_run()


def make_loggers(
    names: list[str] | tuple[str, ...], run_dir: str | Path, config_dict: Mapping[str, Any]
) -> list[Logger]:
    """Build the loggers named in ``run.loggers``, in order.

    Args:
        names: each one of ``LOGGER_NAMES``, no repeats.
        run_dir: the run directory (exists).
        config_dict: the resolved config (wandb config / MLflow params, run name).

    Raises:
        ValueError: an unknown or repeated name.
        ImportError: a tracker that is not installed, naming what to install.
    """
    unknown = [n for n in names if n not in LOGGER_NAMES]
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; valid: {', '.join(LOGGER_NAMES)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"logger(s) {repeated} named more than once in run.loggers")
    run_dir = Path(run_dir)
    loggers: list[Logger] = []
    for name in names:
        if name == "jsonl":
            loggers.append(JsonlLogger(run_dir / "metrics.jsonl"))
        elif name == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError as exc:
                raise MissingExtraError(
                    "the tensorboard logger needs tensorboard: pip install 'entropy-rl[tensorboard]'"
                ) from exc
            loggers.append(TensorBoardLogger(run_dir / "tb"))
        elif name == "wandb":
            loggers.append(WandbLogger(run_dir, config_dict))
        else:
            loggers.append(MLflowLogger(run_dir, config_dict))
    return loggers


def default_loggers(
    run_dir: Path, names: list[str] | None = None, config: dict[str, Any] | None = None
) -> list[Logger]:
    """``names`` from run.loggers (jsonl is always added); None: jsonl + tensorboard if installed."""
    if names is not None:
        return make_loggers(["jsonl", *[n for n in names if n != "jsonl"]], run_dir, config or {})
    loggers: list[Logger] = [JsonlLogger(run_dir / "metrics.jsonl")]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    loggers.append(TensorBoardLogger(run_dir / "tb"))
    return loggers
