"""Selecting a strategy for a request: Refinery's one extension to the OpenAI request body.

Precedence: the body field `strategy` (an object with `name` and options, or a preset name),
then a model alias `<model>+<preset>` (for clients that can only set `model`), else a plain
request (README.md, "Strategies").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from server.exceptions import InvalidRequest, excerpt
from strategies import REGISTRY, Strategy, StrategyOptions

__all__ = ["ResolvedStrategy", "ServerCaps", "resolve_strategy", "split_model_alias"]


@dataclass(frozen=True)
class ServerCaps:
    """What no strategy request may exceed, whatever its options say."""

    max_samples: int  # sub-requests of one strategy request
    max_refine_iterations: int


@dataclass(frozen=True)
class ResolvedStrategy:
    """The strategy a request selected, its validated options, and the preset it came from."""

    strategy: Strategy[Any]
    options: StrategyOptions
    preset: str | None


def split_model_alias(model: str, presets: Mapping[str, Any]) -> tuple[str, str | None]:
    """`smollm2+esc` → ("smollm2", "esc"); anything else → (model, None)."""
    base, plus, preset = model.rpartition("+")
    if plus and base and preset in presets:
        return base, preset
    return model, None


def _invalid_option(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first.get("loc", ()))
    param = f"strategy.{loc}" if loc else "strategy"
    reason = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        reason = "unknown option (GET /v1/strategies lists the options)"
    return InvalidRequest(f"{param}: {reason}", param=param, code="invalid_strategy_option")


def resolve_strategy(
    body: dict[str, Any], presets: Mapping[str, Mapping[str, Any]], caps: ServerCaps
) -> ResolvedStrategy | None:
    """Pop the strategy selection out of a request body (rewriting a model alias) and validate
    it. Raises InvalidRequest with `param` naming the offending option."""
    raw = body.pop("strategy", None)
    preset: str | None = None
    model = body.get("model")
    if isinstance(model, str):
        base, alias_preset = split_model_alias(model, presets)
        if alias_preset is not None:
            body["model"] = base
            if raw is None:
                raw = alias_preset
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in presets:
            raise InvalidRequest(
                f"unknown strategy preset {excerpt(raw)}; presets: {', '.join(sorted(presets))}",
                param="strategy", code="unknown_strategy",
            )
        preset, spec = raw, dict(presets[raw])
    elif isinstance(raw, dict):
        spec = dict(raw)
    else:
        raise InvalidRequest("strategy must be an object with a name, or a preset name",
                             param="strategy", code="invalid_strategy")
    name = spec.pop("name", None)
    if not isinstance(name, str) or name not in REGISTRY:
        raise InvalidRequest(
            f"unknown strategy {excerpt(name)}; strategies: {', '.join(sorted(REGISTRY))}",
            param="strategy.name", code="unknown_strategy",
        )
    strategy = REGISTRY[name]
    try:
        options = strategy.parse_options(spec)
    except ValidationError as exc:
        raise _invalid_option(exc) from exc
    if options.refine_iterations() > caps.max_refine_iterations:
        raise InvalidRequest(
            f"strategy.max_iterations: {options.refine_iterations()} refinement iterations "
            f"exceed this server's cap of {caps.max_refine_iterations}",
            param="strategy.max_iterations", code="over_server_cap",
        )
    if options.sample_budget() > caps.max_samples:
        budget_option = options.budget_option()
        raise InvalidRequest(
            f"strategy.{budget_option}: these options may issue {options.sample_budget()} "
            f"sub-requests, over this server's cap of {caps.max_samples}",
            param=f"strategy.{budget_option}", code="over_server_cap",
        )
    return ResolvedStrategy(strategy, options, preset)
