"""Run a model-written Python program (a HumanEval solution and its tests) in a contained child.

The child is a fresh interpreter (`python -I -B`: no user site, no PYTHON* variables, no
bytecode written) in its own process group, with a temporary folder as working directory,
HOME and TMPDIR, and:
- limits (`resource.setrlimit`): address space (memory), CPU seconds, size of any file written,
  no core dumps; a wall-clock timeout after which the whole process group is killed;
- no network: a new network namespace (`unshare --net`, only a down loopback inside) where the
  kernel allows it, and in every case an audit hook (PEP 578) that refuses to create a socket;
- no writes outside its folder: the audit hook refuses opening for writing, and removing,
  renaming, linking or changing any path that resolves outside the folder (`/dev/null` aside);
- no new processes and no native code loading: fork, exec, spawn, `os.system`, subprocesses,
  `ctypes` and `_posixsubprocess` are refused, so nothing escapes the hook or the group.

This contains the mistakes a model's program makes (endless loops, huge allocations, stray
files, network calls); it is not a boundary against a deliberate attacker, which needs a
container or a VM.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Literal

__all__ = ["SandboxLimits", "SandboxResult", "network_namespace_available", "run_python"]

# Runs in the child before the program: limits first, then the hook (which cannot be removed).
_BOOTSTRAP = r'''
import os, resource, sys
memory, cpu, file_size = (int(v) for v in sys.argv[2:5])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
ROOT = os.path.realpath(os.getcwd())
ALLOWED = {"/dev/null"}
REFUSED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
           "socket.sendto", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "subprocess.Popen", "ctypes.dlopen", "ctypes.cdata", "os.kill",
           "os.killpg", "resource.setrlimit", "resource.prlimit", "os.chroot"}
REFUSED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "subprocess", "multiprocessing"}
# event -> positions of the path arguments it changes
CHANGES = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
           "os.chown": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (0, 1),
           "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "os.mkfifo": (0,),
           "os.mknod": (0,), "os.chflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
           "shutil.move": (0, 1), "shutil.copyfile": (1,), "shutil.copytree": (1,)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor, opened through this check
    real = os.path.realpath(os.fsdecode(path))
    return real in ALLOWED or real == ROOT or real.startswith(ROOT + os.sep)

def hook(event, args):
    if event in REFUSED or (event == "import" and args[0] in REFUSED_IMPORTS):
        raise PermissionError(f"sandbox: {event} {args[0] if args else ''} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or (
            flags is not None and flags & WRITE_FLAGS)
        # os.open (mode None) may resolve a relative path against a dir_fd: absolute only.
        relative_raw = mode is None and not isinstance(path, int) and not os.path.isabs(path)
        if writes and (relative_raw or not inside(path)):
            raise PermissionError(f"sandbox: writing {path!r} outside {ROOT} is not allowed")
    elif event in CHANGES:
        for position in CHANGES[event]:
            if position < len(args) and args[position] is not None and not inside(
                    args[position]):
                raise PermissionError(f"sandbox: {event} {args[position]!r} is not allowed")

sys.addaudithook(hook)
program = sys.argv[1]
sys.argv = [program]
with open(program, encoding="utf-8") as fh:
    code = compile(fh.read(), program, "exec")
exec(code, {"__name__": "__main__", "__file__": program})
'''


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use. Defaults fit a HumanEval test (well under a second)."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    output_chars: int = 2000  # the tail of stdout/stderr that is kept


@dataclass(frozen=True)
class SandboxResult:
    """`passed`: exit status 0 within the limits; `failed`: any other exit (an assertion,
    an exception, MemoryError, a refused operation, a signal); `timeout`: killed at the
    wall-clock limit."""

    status: Literal["passed", "failed", "timeout"]
    returncode: int | None
    output: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def network_namespace_available() -> tuple[str, ...] | None:
    """The `unshare` prefix that gives a child an empty network namespace here, or None where
    the kernel or the container forbids it (then only the audit hook guards the network)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ((unshare, "--net"), (unshare, "--map-root-user", "--net")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
            if probe.returncode == 0:
                return prefix
    return None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` as a program in the sandbox; blocking (run it in a thread from async code)."""
    limits = limits or SandboxLimits()
    folder = tempfile.mkdtemp(prefix="refinery-sandbox-")
    try:
        with open(os.path.join(folder, "program.py"), "w", encoding="utf-8") as fh:
            fh.write(source)
        cpu_s = max(1, int(limits.timeout_s) + 1)
        command = [*(network_namespace_available() or ()), sys.executable, "-I", "-B", "-c",
                   _BOOTSTRAP, "program.py", str(limits.memory_bytes), str(cpu_s),
                   str(limits.file_size_bytes)]
        env = {"PATH": os.defpath, "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}
        process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            output, _ = process.communicate(timeout=limits.timeout_s)
            status: Literal["passed", "failed", "timeout"] = (
                "passed" if process.returncode == 0 else "failed")
        except subprocess.TimeoutExpired:
            _kill_group(process)
            output, _ = process.communicate()
            status = "timeout"
        finally:
            _kill_group(process)  # nothing it started may outlive it
        text = output.decode("utf-8", errors="replace")[-limits.output_chars:]
        return SandboxResult(status, process.returncode, text)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
