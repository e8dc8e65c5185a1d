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
    TokenStatistics,
    statistics_of,
)

__all__ = [
    "CERTAINTY_EXTRA_ARG",
    "TokenStatistics",
    "active",
    "enabled",
    "register",
    "statistics_of",
]

logger = logging.getLogger(__name__)
_installed = False


def enabled() -> bool:
    """Whether the plugin is switched on (`REFINERY_CERTAINTY`, default on)."""
    from server.settings import Settings

    return Settings().certainty


def active() -> bool:
    """Whether this process hooked vLLM: only then do requests get exact values back."""
    return _installed


def register() -> None:
    """The `vllm.general_plugins` entry point: check vLLM's internals, then hook them."""
    if not enabled():
        logger.info("exact self-certainty plugin disabled (REFINERY_CERTAINTY=off)")
        return
    from server.engine.certainty.frontend_hooks import install_frontend_hooks
    from server.engine.certainty.internals import check_internals
    from server.engine.certainty.worker_hooks import install_worker_hooks

    global _installed
    check_internals()
    install_worker_hooks()
    install_frontend_hooks()
    _installed = True
