"""Exact self-certainty inside the engine: a vLLM general plugin shipped with Refinery.

Self-certainty needs the whole next-token distribution at every step, which no OpenAI-style
API returns (vLLM caps logprobs at 20). This plugin computes it where the logits are, in vLLM's
sampler, as two row reductions per token (the self-certainty term and the entropy), and carries
only those two floats back with the sampled-token logprobs. A request asks for them with
`SamplingParams.extra_args = {"refinery_certainty": 1}` and `logprobs >= 0`; its vLLM
`CompletionOutput` then carries a `TokenStatistics` (`statistics_of(output)`).

vLLM calls `register()` in every process it starts (entry point group
`vllm.general_plugins`, installed with the package): the engine-core and worker processes get
the sampler hooks, the API process the front-end hooks. `REFINERY_CERTAINTY=off` disables it.
"""

from __future__ import annotations

import logging

from server.engine.certainty.frontend_hooks import (
    CERTAINTY_EXTRA_ARG,
    LOGPROB_TEXT_EXTRA_ARG,
    TokenStatistics,
    statistics_of,
)

__all__ = [
    "CERTAINTY_EXTRA_ARG",
    "CERTAINTY_VARIABLE",
    "LOGPROB_TEXT_EXTRA_ARG",
    "TokenStatistics",
    "active",
    "enabled",
    "register",
    "statistics_of",
]

logger = logging.getLogger(__name__)
_installed = False
CERTAINTY_VARIABLE = "REFINERY_CERTAINTY"


def enabled() -> bool:
    """Whether the plugin is switched on (`REFINERY_CERTAINTY`, default on).

    The plugin runs in every vLLM process, so it reads its own variable only (with the same
    parsing as `Settings.certainty`): an unrelated bad `REFINERY_*` value must not break engine
    start-up. A bad value of this one stops it with a message naming the variable.
    """
    import os

    from pydantic import TypeAdapter, ValidationError

    raw = os.environ.get(CERTAINTY_VARIABLE)
    if raw is None:
        return True
    try:
        return TypeAdapter(bool).validate_python(raw.strip())
    except ValidationError:
        raise ValueError(f"{CERTAINTY_VARIABLE}={raw!r}: expected on/off (or true/false, "
                         "1/0)") from None


def active() -> bool:
    """Whether this process hooked vLLM: only then do requests get exact values back."""
    return _installed


def register() -> None:
    """The `vllm.general_plugins` entry point: check vLLM's internals, then hook them."""
    if not enabled():
        logger.info("exact self-certainty plugin disabled (REFINERY_CERTAINTY=off)")
        return
    from server.engine.certainty.frontend_hooks import install_frontend_hooks
    from server.engine.certainty.worker_hooks import install_worker_hooks
    from server.engine.vllm_internals import CERTAINTY_HOOKS, check_internals

    global _installed
    check_internals(CERTAINTY_HOOKS)
    install_worker_hooks()
    install_frontend_hooks()
    _installed = True
