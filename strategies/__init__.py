"""Test-time strategies: pure async logic over a Sampler (no HTTP, no engine code).

Importing this package registers every strategy in `REGISTRY` and validates the presets.
"""

from strategies import (  # noqa: F401  (registration)
    adaptive_refine,
    best_of_n,
    deepconf,
    dsc,
    self_consistency,
    self_refine,
)
from strategies.base import (
    REGISTRY,
    Message,
    Result,
    Sample,
    Sampler,
    Strategy,
    StrategyOptions,
    TokenWatcher,
)
from strategies.presets import PRESETS

__all__ = [
    "PRESETS",
    "REGISTRY",
    "Message",
    "Result",
    "Sample",
    "Sampler",
    "Strategy",
    "StrategyOptions",
    "TokenWatcher",
]
