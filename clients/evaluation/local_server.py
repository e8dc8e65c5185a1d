"""`refinery eval` without `--base-url`: start `refinery serve` for the run and stop it after.

The server runs in its own session (process group) and logs to a file; readiness is polled on
/ready. It is stopped with SIGTERM (a graceful drain) and, should anything remain, a SIGKILL
to the whole group, so that no engine process outlives the evaluation.
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
from pathlib import Path

import httpx

__all__ = ["local_server"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def local_server(model: str | None, serve_args: Sequence[str], log_path: Path,
                 ready_timeout_s: float = 1800.0) -> Iterator[str]:
    """Yield the base URL of a ready `refinery serve [model] [serve_args]`; RuntimeError with
    the log's tail when it exits or does not become ready in time (a first start may convert
    a model: minutes)."""
    port = _free_port()
    command = [sys.executable, "-m", "server.cli", "serve", *([model] if model else []),
               "--host", "127.0.0.1", "--port", str(port), *serve_args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        with httpx.Client(base_url=base_url, timeout=5) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"refinery serve exited with {process.returncode} "
                                       f"(log {log_path}):\n{_tail(log_path)}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/ready").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"refinery serve not ready after {ready_timeout_s:.0f} s "
                                       f"(log {log_path})")
                time.sleep(0.5)
        yield base_url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(120)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
