"""Plain requests through Refinery vs plain `vllm serve`: same model, same flags, same load.

    python benchmarks/passthrough.py [--requests 128 --concurrency 16 --max-tokens 64
                                      --rounds 3] [-- ENGINE FLAGS FOR BOTH SERVERS]

Only one server runs at a time (on a small CPU machine two would take each other's cores).
Each round starts one server, warms it up, runs the streaming load, records its RSS, stops it,
then does the same for the other; the order alternates per round (A B, B A, A B, ...), so a
drift of the machine over time hits both sides alike. The verdict is per-round Refinery/vLLM
ratios and differences, medians over rounds, never one absolute timing, because timings on a
shared machine are noisy (targets and past runs: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import importlib.metadata
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from clients.loadgen import LoadResult, run_streaming_load
from harness import save_figure, split_engine_flags
from tests.servers import (
    REFINERY_READY,
    VLLM_ENV,
    VLLM_READY,
    free_port,
    refinery_command,
    running,
    spawn,
    vllm_command,
)

REPO = Path(__file__).resolve().parents[1]
SERVED_NAME = "smollm2"
REFINERY, VLLM = "refinery", "vllm serve"
# Sixteen short, different prompts, cycled: the workload is the same for both servers.
PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "List some facts about the planet Mars.",
    "Describe the taste of a fresh orange.",
    "What is the capital of France and why is it famous?",
    "Give advice to someone learning to cook.",
    "Summarise the water cycle for a child.",
    "Write a poem about autumn leaves.",
    "How do bees make honey?",
    "Describe a busy market in the morning.",
    "Why is the sky blue?",
    "Tell me about the history of paper.",
    "Write a letter to a friend about a holiday.",
    "Explain what a computer program is.",
    "Describe the sound of rain on a roof.",
    "What makes a good night's sleep?",
)


@dataclass(frozen=True)
class Contender:
    """One of the two servers: a name and the command that starts it on a port."""

    name: str
    command: Callable[[int], list[str]]
    ready_paths: tuple[str, ...]
    env: dict[str, str]


@dataclass(frozen=True)
class RunSample:
    """One server's run in one round."""

    server: str
    round: int
    start_to_ready_s: float
    rss_mib: float
    load: LoadResult


def _run_one(contender: Contender, rnd: int, args: argparse.Namespace, logs: Path) -> RunSample:
    name = contender.name
    port = free_port()
    log = logs / f"{name.replace(' ', '-')}-round{rnd}.log"
    print(f"round {rnd}: {name}: starting (log {log})", flush=True)
    server = spawn(contender.command(port), log, port=port, ready_paths=contender.ready_paths,
                   env=contender.env)
    try:
        with running(server, args.startup_timeout):
            ready_s = server.ready_after_s or 0.0
            load = functools.partial(
                run_streaming_load,
                server.base_url,
                SERVED_NAME,
                max_tokens=args.max_tokens,
                prompts=PROMPTS,
            )
            if args.warmup:
                concurrency = min(args.warmup, args.concurrency)
                asyncio.run(load(requests=args.warmup, concurrency=concurrency, progress=False))
            result = asyncio.run(load(requests=args.requests, concurrency=args.concurrency))
            rss = server.rss_mib()
    except Exception:
        print(server.log_tail(40), file=sys.stderr)
        print(f"{name} failed in round {rnd}; full log: {log}", file=sys.stderr)
        raise
    print(
        f"round {rnd}: {name}: {result.output_tokens_per_s:.1f} tok/s, "
        f"TTFT p50 {result.ttft_p50_ms:.1f} ms, ready in {ready_s:.1f} s",
        flush=True,
    )
    return RunSample(name, rnd, ready_s, rss, result)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _engine_config(
    kv_cache_space: float, user_flags: list[str]
) -> tuple[list[str], dict[str, str]]:
    """Flags and environment for both servers: what Refinery applies by default, then the user's.

    Passing Refinery's defaults (`server.cli.apply_engine_defaults`) explicitly to both keeps
    the comparison like for like even if those defaults change.
    """
    flags = ["--enable-prefix-caching", "--scheduling-policy", "priority"]
    env = {"VLLM_CPU_KVCACHE_SPACE": f"{kv_cache_space:g}"}
    if _on_cpu():
        flags.extend(["--no-enable-chunked-prefill", "--enforce-eager"])
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        from server.cli import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            flags.extend(["--dtype", "float32"])
    return flags + user_flags, env


def _contenders(model: Path, flags: list[str], env: dict[str, str]) -> list[Contender]:
    """Refinery and `vllm serve` (this interpreter's vLLM), identical apart from the port."""
    shared = ("--served-model-name", SERVED_NAME, *flags)
    return [
        Contender(REFINERY, lambda port: refinery_command(port, str(model), *shared),
                  REFINERY_READY, env),
        Contender(VLLM, lambda port: vllm_command(port, model, *shared), VLLM_READY,
                  {**env, **VLLM_ENV}),
    ]


def _median(samples: Sequence[RunSample], server: str, attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples if s.server == server)


def _summary(samples: Sequence[RunSample]) -> dict[str, float]:
    """Per-round Refinery/vLLM ratio and differences, medians over rounds."""
    by_round: dict[int, dict[str, LoadResult]] = {}
    for s in samples:
        by_round.setdefault(s.round, {})[s.server] = s.load
    pairs = [(r[REFINERY], r[VLLM]) for r in by_round.values()]

    def pooled(loads: Sequence[LoadResult]) -> float:
        return sum(x.completion_tokens for x in loads) / sum(x.wall_s for x in loads)

    return {
        "throughput_ratio": statistics.median(
            a.output_tokens_per_s / b.output_tokens_per_s for a, b in pairs
        ),
        # All rounds' tokens over all rounds' time: with an even number of rounds each server
        # went first equally often, so a drift of the machine during the run cancels out.
        "pooled_ratio": pooled([a for a, _ in pairs]) / pooled([b for _, b in pairs]),
        "ttft_p50_diff_ms": statistics.median(a.ttft_p50_ms - b.ttft_p50_ms for a, b in pairs),
        "ttft_p95_diff_ms": statistics.median(a.ttft_p95_ms - b.ttft_p95_ms for a, b in pairs),
    }


HEADER = [
    "round",
    "server",
    "output tok/s",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "start-to-ready s",
    "RSS MiB",
]


def _rows(samples: Sequence[RunSample]) -> list[list[str]]:
    def row(s: RunSample) -> list[str]:
        timings = (s.load.output_tokens_per_s, s.load.ttft_p50_ms, s.load.ttft_p95_ms)
        numbers = [f"{v:.1f}" for v in (*timings, s.start_to_ready_s)]
        return [str(s.round), s.server, *numbers, f"{s.rss_mib:.0f}"]

    return [row(s) for s in samples]


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [HEADER, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip() + ", "
    mem = psutil.virtual_memory().total / 2**30
    return f"{platform.platform()}, {cpu}{os.cpu_count()} CPUs, {mem:.0f} GiB RAM"


def _versions() -> str:
    found = []
    for dist in ("refinery", "vllm-cpu", "vllm"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(found)


def _markdown(
    samples: Sequence[RunSample],
    args: argparse.Namespace,
    argv: Sequence[str],
    model: Path,
    setup: str,
    png: Path,
) -> str:
    s = _summary(samples)
    ready = {n: _median(samples, n, "start_to_ready_s") for n in (REFINERY, VLLM)}
    rss = {n: _median(samples, n, "rss_mib") for n in (REFINERY, VLLM)}
    met = {True: "yes", False: "**no**"}
    rows = ["| " + " | ".join(r) + " |" for r in _rows(samples)]
    return "\n".join(
        [
            "### Plain requests: Refinery vs `vllm serve`",
            "",
            f"- command: `python benchmarks/passthrough.py {shlex.join(argv)}`",
            f"- machine: {_machine()}; {_versions()}",
            f"- model: `{model.name}` served as `{SERVED_NAME}`; both servers: `{setup}`",
            f"- date: {datetime.date.today().isoformat()}",
            f"- workload: {args.requests} streaming `/v1/completions`, concurrency "
            f"{args.concurrency}, {args.max_tokens} output tokens each (`ignore_eos`), temperature "
            f"0; rounds: {args.rounds}, one server at a time, order alternated per round",
            "",
            "| " + " | ".join(HEADER) + " |",
            "|" + "---|" * len(HEADER),
            *rows,
            "",
            "| Refinery vs vLLM (median over rounds) | target | measured | met |",
            "|---|---|---|---|",
            f"| throughput ratio | ≥ 0.97 | {s['throughput_ratio']:.3f} | "
            f"{met[s['throughput_ratio'] >= 0.97]} |",
            f"| throughput ratio, pooled over rounds | | {s['pooled_ratio']:.3f} | |",
            f"| TTFT p50 difference | ≤ +5 ms | {s['ttft_p50_diff_ms']:+.1f} ms | "
            f"{met[s['ttft_p50_diff_ms'] <= 5]} |",
            f"| TTFT p95 difference | | {s['ttft_p95_diff_ms']:+.1f} ms | |",
            f"| start-to-ready | | {ready[REFINERY]:.1f} s vs {ready[VLLM]:.1f} s | |",
            f"| RSS (process tree) | | {rss[REFINERY]:.0f} MiB vs {rss[VLLM]:.0f} MiB | |",
            "",
            f"![Refinery vs vllm serve]({os.path.relpath(png, REPO / 'docs')})",
        ]
    )


def _plot(samples: Sequence[RunSample], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rounds = sorted({s.round for s in samples})
    width = 0.38
    for k, name in enumerate((REFINERY, VLLM)):
        got = {s.round: s for s in samples if s.server == name}
        left.bar(
            [r + (k - 0.5) * width for r in rounds],
            [got[r].load.output_tokens_per_s for r in rounds],
            width,
            label=name,
        )
        for j, attr in enumerate(("ttft_p50_ms", "ttft_p95_ms")):
            values = [getattr(got[r].load, attr) for r in rounds]
            x = j + (k - 0.5) * width
            right.bar(
                x, statistics.median(values), width, color=f"C{k}", label=name if j == 0 else None
            )
            right.scatter([x] * len(values), values, color="black", s=12, zorder=3)
    left.set(
        title="Output-token throughput per round", xlabel="round", ylabel="tokens/s", xticks=rounds
    )
    right.set(
        title="TTFT (bars: median over rounds; dots: rounds)",
        ylabel="ms",
        xticks=[0, 1],
        xticklabels=["p50", "p95"],
    )
    left.legend()
    right.legend()
    save_figure(fig, png)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after `--` are engine flags given to both servers.",
    )
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=8, help="warm-up requests per start")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model folder (default: the embedded SmolLM2, converted)",
    )
    parser.add_argument(
        "--kv-cache-space",
        type=float,
        default=float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 2)),
        help="VLLM_CPU_KVCACHE_SPACE (GiB) for both servers",
    )
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "passthrough.png")
    return parser.parse_args(own), engine_flags


def main(argv: Sequence[str]) -> int:
    args, engine_flags = _parse(argv)
    model = args.model
    if model is None:
        from server.embedded_model import ensure_embedded_model
        from server.settings import Settings

        model = ensure_embedded_model(Settings().cache_dir)
    flags, env = _engine_config(args.kv_cache_space, engine_flags)
    contenders = _contenders(model, flags, env)
    logs = Path(tempfile.mkdtemp(prefix="refinery-passthrough-"))
    samples = [
        _run_one(contender, rnd, args, logs)
        for rnd in range(1, args.rounds + 1)
        for contender in (contenders if rnd % 2 else contenders[::-1])
    ]
    print()
    print(_text_table(_rows(samples)))
    s = _summary(samples)
    print(
        f"\nRefinery/vLLM throughput ratio (median of rounds): {s['throughput_ratio']:.3f}"
        f"  (target >= 0.97); pooled over rounds: {s['pooled_ratio']:.3f}"
    )
    print(
        f"TTFT p50 difference Refinery - vLLM: {s['ttft_p50_diff_ms']:+.1f} ms  "
        f"(target <= +5 ms); p95: {s['ttft_p95_diff_ms']:+.1f} ms"
    )
    _plot(samples, args.out_png)
    print(f"plot: {args.out_png}; server logs: {logs}\n")
    setup = " ".join([*(f"{k}={v}" for k, v in sorted(env.items())), *flags])
    print(_markdown(samples, args, argv, model, setup, args.out_png))
    return 0


if __name__ == "__main__":  # vLLM spawns worker processes that re-import the main module
    sys.exit(main(sys.argv[1:]))
