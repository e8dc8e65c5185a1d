"""The HumanEval sandbox contains what a model's program gets wrong: endless loops, huge
allocations, network calls, writes outside its folder, new processes — each refused or killed,
and nothing left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clients.evaluation.sandbox import SandboxLimits, network_namespace_available, run_python

QUICK = SandboxLimits(timeout_s=3.0, memory_bytes=512 << 20)


def test_a_correct_program_passes_and_its_output_is_kept() -> None:
    result = run_python("assert sorted([3, 1, 2]) == [1, 2, 3]\nprint('tests ran')", QUICK)
    assert result.passed and result.returncode == 0
    assert "tests ran" in result.output


def test_a_failing_assertion_fails() -> None:
    result = run_python("assert 1 + 1 == 3", QUICK)
    assert result.status == "failed"
    assert "AssertionError" in result.output


def test_a_program_that_loops_forever_is_killed_at_the_time_limit() -> None:
    started = time.monotonic()
    result = run_python("while True:\n    pass", SandboxLimits(timeout_s=1.0))
    assert result.status == "timeout"
    assert time.monotonic() - started < 30  # killed, not waited for


def test_a_program_that_sleeps_is_stopped_by_the_wall_clock() -> None:
    """A program blocked in a sleep uses no CPU: only the wall clock stops it."""
    result = run_python("import time\ntime.sleep(600)", SandboxLimits(timeout_s=1.0))
    assert result.status == "timeout"


def test_a_program_that_allocates_too_much_fails_with_memory_error() -> None:
    result = run_python("block = bytearray(2 << 30)\nprint('allocated')", QUICK)
    assert result.status == "failed"
    assert "MemoryError" in result.output and "allocated" not in result.output


@pytest.mark.parametrize("program", [
    "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)",
    "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)",
    "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)",
])
def test_a_program_that_tries_the_network_is_refused(program: str) -> None:
    result = run_python(program, QUICK)
    assert result.status == "failed"
    assert "sandbox: socket" in result.output


def test_the_network_namespace_is_used_where_the_kernel_allows_it() -> None:
    """Where `unshare --net` works, even a socket made before the hook would see no route;
    elsewhere the hook alone guards (checked above)."""
    prefix = network_namespace_available()
    assert prefix is None or prefix[-1] == "--net"


@pytest.mark.parametrize("program", [
    "open({target!r}, 'w').write('escaped')",
    "import os\nos.close(os.open({target!r}, os.O_WRONLY | os.O_CREAT))",
    "import pathlib\npathlib.Path({target!r}).write_text('escaped')",
    "import os\nos.symlink('/etc/hostname', 'link')\nopen({target!r}, 'a').write('x')",
    "import shutil\nshutil.copyfile('/etc/hostname', {target!r})",
    "import os\nos.system('touch {target}')",
    "import subprocess\nsubprocess.run(['touch', {target!r}])",
    "import os\nif os.fork() == 0:\n    open({target!r}, 'w').write('child')",
])
def test_a_program_that_writes_outside_its_folder_is_refused(tmp_path: Path,
                                                             program: str) -> None:
    target = tmp_path / "outside.txt"
    result = run_python(program.format(target=str(target)), QUICK)
    assert result.status == "failed"
    assert "sandbox:" in result.output
    assert not target.exists()


def test_a_program_may_use_its_own_folder_and_temp_files() -> None:
    program = ("import tempfile, os\nopen('scratch.txt', 'w').write('ok')\n"
               "with tempfile.NamedTemporaryFile() as fh:\n    fh.write(b'x')\n"
               "os.remove('scratch.txt')")
    assert run_python(program, QUICK).passed


def test_a_program_cannot_delete_files_outside(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    result = run_python(f"import os\nos.remove({str(victim)!r})", QUICK)
    assert result.status == "failed"
    assert victim.read_text() == "precious"


def test_the_sandbox_folder_is_removed_afterwards() -> None:
    result = run_python("import os\nprint(os.getcwd())", QUICK)
    folder = result.output.strip().splitlines()[-1]
    assert "refinery-sandbox-" in folder
    assert not os.path.exists(folder)
