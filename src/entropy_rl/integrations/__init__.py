"""Meet users where they train: read other frameworks' metric streams, plug into TRL and verl,
log to experiment trackers.

Light modules are exported here. The framework adapters import their framework and are
imported explicitly: ``entropy_rl.integrations.trl`` (extra ``trl``) and
``entropy_rl.integrations.verl`` (extra ``verl``).
"""

from entropy_rl.integrations.watch import MetricStream, parse_stream, watch
from entropy_rl.train.logging import LOGGER_NAMES, MLflowLogger, WandbLogger, make_loggers

__all__ = [
    "LOGGER_NAMES",
    "MLflowLogger",
    "MetricStream",
    "WandbLogger",
    "make_loggers",
    "parse_stream",
    "watch",
]
