"""What every benchmark script does the same way: split its own arguments from the engine's,
build the offline vLLM engine `refinery serve` would build, and save a plot."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["offline_llm", "save_figure", "split_engine_flags"]

# Scripts see only benchmarks/ on sys.path; the root adds tests.servers (kept out of the wheel).
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

# The engine arguments that change what an offline `LLM` computes and how fast.
_OFFLINE_FIELDS = ("model", "enforce_eager", "enable_prefix_caching", "enable_chunked_prefill",
                   "max_model_len", "block_size", "dtype")


def split_engine_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`[script options] [-- engine flags]` → (script options, engine flags)."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    return argv[:cut], argv[cut + 1:]


def offline_llm(model: Path, engine_flags: Sequence[str]) -> Any:
    """vLLM's offline `LLM` with exactly the engine arguments `refinery serve` resolves."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    from server.cli import resolve_serve_args

    _, serve_args = resolve_serve_args([str(model), *engine_flags])
    engine_args = EngineArgs.from_cli_args(serve_args)
    return LLM(**{f: getattr(engine_args, f) for f in _OFFLINE_FIELDS
                  if getattr(engine_args, f, None) is not None})


def save_figure(fig: Any, png: Path) -> None:
    """Write a matplotlib figure as the benchmark's PNG and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
