"""What the weights' dtype costs on this CPU: the block-size benchmark's workloads on servers
that differ only in `--dtype`, measured side by side.

    python benchmarks/cpu_dtype.py [--dtypes bfloat16,float32] [--rounds 3] [-- ENGINE FLAGS]

`refinery serve` picks float32 on an x86 CPU without native bfloat16 (no AVX512-BF16, no AMX;
`server.cli.cpu_has_native_bf16`) and leaves vLLM's choice (bfloat16 for a bf16 checkpoint)
elsewhere. This script is the evidence for that rule on the machine it runs on: one
`refinery serve` per dtype for the whole run, one working at a time, order rotated every round
(benchmarks/block_size.py's `side_by_side`); the verdict is the median over rounds of each
dtype's ratio to the first.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from block_size import median_ratios, medians_table, plot_ratios, side_by_side
from harness import served_model, spawn_refinery, split_engine_flags
from tests.servers import running

REPO = Path(__file__).resolve().parents[1]
SERVED = "model"


def cpu_flags() -> str:
    """What decides the rule: does torch see AVX512, AVX512-BF16, AMX on this CPU."""
    import torch

    return (f"AVX512 {torch.cpu._is_avx512_supported()}, "
            f"AVX512-BF16 {torch.cpu._is_avx512_bf16_supported()}, "
            f"AMX {torch.cpu._is_amx_tile_supported()}")


def main(argv: Sequence[str]) -> int:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "cpu_dtype.png")
    args = parser.parse_args(own)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model = served_model(args.model)
    labels = args.dtypes.split(",")
    with contextlib.ExitStack() as stack:
        servers = {label: stack.enter_context(running(spawn_refinery(
            model, SERVED, [*engine_flags, "--dtype", label], f"dtype-{label}")))
            for label in labels}
        results = side_by_side(servers, args.rounds)
    plot_ratios(median_ratios(results, labels, args.rounds), labels, args.out_png,
                "Weights' dtype on CPU: each workload (higher is better, TTFT: lower)")
    print(f"""
### Weights' dtype on CPU

- command: `python benchmarks/cpu_dtype.py {shlex.join(argv)}`
- machine: {platform.platform()}, {platform.processor() or platform.machine()},
  {os.cpu_count()} CPUs ({cpu_flags()}); model `{model.name}`
- date: {datetime.date.today().isoformat()}; {args.rounds} rounds, server order rotated

Median over rounds (in brackets: median of the per-round ratio to {labels[0]}):

{medians_table(results, labels, args.rounds)}

![dtype]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
