"""Experiment trackers: kept importable here; they live in `entropy_rl.train.logging`.

Every logger (``metrics.jsonl``, TensorBoard, Weights & Biases, MLflow) and ``make_loggers``
are defined in one module, `entropy_rl.train.logging`; this module only re-exports the tracker
names that ``entropy_rl.integrations`` has always offered.
"""

from entropy_rl.train.logging import (
    LOGGER_NAMES,
    MLflowLogger,
    WandbLogger,
    make_loggers,
    mlflow_key,
)

__all__ = ["LOGGER_NAMES", "MLflowLogger", "WandbLogger", "make_loggers", "mlflow_key"]
