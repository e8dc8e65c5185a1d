"""One sample's certainty numbers from its per-token values.

- certainty: the mean self-certainty over the generated tokens (Kang et al. 2025, eq. 4).
- entropy: the mean next-token entropy (nats).
- lowest group certainty: the lowest mean over a sliding window of consecutive tokens
  (Fu et al. 2025, "Deep Think with Confidence", §3.1 "group confidence", window 2048). One bad
  stretch of a long reasoning trace shows there even when the mean hides it; for samples
  shorter than the window it equals the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["GROUP_WINDOW", "CertaintySummary", "lowest_window_mean", "summarise"]

# DeepConf's group size (Fu et al. 2025, §3.1).
GROUP_WINDOW = 2048


@dataclass(frozen=True)
class CertaintySummary:
    certainty: float
    entropy: float | None
    lowest_group_certainty: float


def lowest_window_mean(values: Sequence[float], window: int = GROUP_WINDOW) -> float:
    """The lowest mean of `window` consecutive values (the mean when there are fewer)."""
    if not values:
        raise ValueError("no values")
    width = min(window, len(values))
    running = sum(values[:width])
    lowest = running
    for i in range(width, len(values)):
        running += values[i] - values[i - width]
        lowest = min(lowest, running)
    return lowest / width


def summarise(certainty: Sequence[float], entropy: Sequence[float] | None = None,
              window: int = GROUP_WINDOW) -> CertaintySummary | None:
    """Summary of one sample's per-token values, or None for a sample with no tokens."""
    if not certainty:
        return None
    return CertaintySummary(
        certainty=sum(certainty) / len(certainty),
        entropy=sum(entropy) / len(entropy) if entropy else None,
        lowest_group_certainty=lowest_window_mean(certainty, window),
    )
