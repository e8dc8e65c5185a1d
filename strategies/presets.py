"""Strategy presets: `"strategy": "<preset>"` in a request body, or the model alias
`<model>+<preset>` for clients that can only set `model`.

Each preset is validated against its strategy's options model when this module is imported, so
a typo stops the server at start-up instead of failing a user's request.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from strategies.base import REGISTRY

__all__ = ["PRESETS", "validate_presets"]


def validate_presets(presets: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ValueError naming the preset whose strategy or options are wrong."""
    for preset, spec in presets.items():
        options = dict(spec)
        name = options.pop("name", None)
        if name not in REGISTRY:
            raise ValueError(f"preset {preset!r}: unknown strategy {name!r}")
        try:
            REGISTRY[name].parse_options(options)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ValueError(f"preset {preset!r}: {exc}") from exc


_PRESETS: dict[str, dict[str, Any]] = {
    "sc8": {"name": "self_consistency", "stop": "fixed", "max_samples": 8},
    "esc": {"name": "self_consistency", "stop": "esc"},
    "asc": {"name": "self_consistency", "stop": "asc"},
    "bon8": {"name": "best_of_n", "n": 8, "selection": "self_certainty"},
    "borda8": {"name": "best_of_n", "n": 8, "selection": "borda"},
    "refine": {"name": "self_refine"},
    "adaptive": {"name": "adaptive_refine"},
    "deepconf": {"name": "deepconf", "eta": 10, "max_samples": 32},
    "dsc": {"name": "dsc"},
}
validate_presets(_PRESETS)
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(spec) for name, spec in _PRESETS.items()})
