"""Test-time strategies: pure async logic over a Sampler (no HTTP, no engine code).

Importing this package registers every strategy in `REGISTRY`.
"""

from strategies import best_of_n, self_consistency  # noqa: F401  (registration)
from strategies.base import REGISTRY, Result, Sample, Sampler, Strategy, StrategyOptions

__all__ = ["REGISTRY", "Result", "Sample", "Sampler", "Strategy", "StrategyOptions"]
