"""The servers the end-to-end tests start: `refinery serve` and, for parity, `vllm serve`."""

from __future__ import annotations

from pathlib import Path

from clients.servers import (
    REFINERY_READY,
    VLLM_ENV,
    VLLM_READY,
    ServerProcess,
    free_port,
    refinery_command,
    spawn,
    vllm_command,
)

__all__ = ["ServerProcess", "start_refinery", "start_vllm"]

# Eager mode starts in ~20 s instead of ~60 s; no reserved core, as `refinery serve` sets.
COMMON_ENGINE_FLAGS = ("--enforce-eager",)
COMMON_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def start_refinery(
    logs: Path, *args: str, env: dict[str, str] | None = None, name: str = "refinery"
) -> ServerProcess:
    port = free_port()
    return spawn(refinery_command(port, *COMMON_ENGINE_FLAGS, *args),
                 logs / f"{name}-{port}.log", port=port, ready_paths=REFINERY_READY,
                 env={**COMMON_ENV, **(env or {})})


def start_vllm(logs: Path, model: Path, *args: str) -> ServerProcess:
    """Plain `vllm serve` with the engine flags `refinery serve` applies by default on CPU."""
    port = free_port()
    flags = ("--served-model-name", "smollm2", "--enable-prefix-caching",
             "--no-enable-chunked-prefill", "--scheduling-policy", "priority",
             *COMMON_ENGINE_FLAGS, *args)
    return spawn(vllm_command(port, model, *flags), logs / f"vllm-{port}.log", port=port,
                 ready_paths=VLLM_READY, env={**COMMON_ENV, **VLLM_ENV})
