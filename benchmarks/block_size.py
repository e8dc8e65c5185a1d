"""What a KV block size costs on CPU: the same workloads on servers that differ only in
`--block-size`, measured side by side.

    python benchmarks/block_size.py [--block-sizes 32,64,128] [--rounds 3] [-- ENGINE FLAGS]

A smaller block lets more of a short prompt be shared between a strategy's samples (prefix
caching reuses full blocks only: benchmarks/prefix_sharing.py), but it may slow attention and
block bookkeeping. This script answers which block size costs least overall. One
`refinery serve` per block size runs for the whole benchmark; only one of them works at a time,
and the order of the servers rotates every round. Workloads (fresh nonces: nothing cached):
- strategy, short prompts: self-consistency N=8 over short chat questions (≈ 100 tokens), a
  few at a time: questions/s;
- strategy, long prompts: the same over ≈ 1,000-token questions: questions/s;
- plain decode: concurrent plain requests with short prompts: output tokens/s;
- TTFT: one streamed plain request at a time with a ≈ 1,000-token prompt: time to first token.
The verdict is the median over rounds of each block size's ratio to the first block size of
the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from harness import save_figure, served_model, spawn_refinery, split_engine_flags
from tests.servers import running

REPO = Path(__file__).resolve().parents[1]
SERVED = "model"
SAMPLES = 8
FILLER = " The quick brown fox jumps over the lazy dog."
SHORT, LONG, DECODE, TTFT = ("strategy, short prompts (q/s)", "strategy, long prompts (q/s)",
                             "plain decode (tok/s)", "TTFT, 1k-token prompt (s)")
WORKLOADS = (SHORT, LONG, DECODE, TTFT)


def question(words: int) -> str:
    """A fresh question: a nonce first, so no earlier request shares any block with it."""
    return (f"Note {uuid.uuid4().hex}." + FILLER * (words // 9)
            + " How many animals are named in the note? Think, then answer.")


async def _strategies(client: httpx.AsyncClient, words: int, questions: int,
                      concurrency: int, max_tokens: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    strategy = {"name": "self_consistency", "stop": "fixed", "max_samples": SAMPLES}

    async def one(i: int) -> None:
        async with gate:
            reply = await client.post("/v1/chat/completions", json={
                "model": SERVED, "messages": [{"role": "user", "content": question(words)}],
                "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.8, "seed": i,
                "strategy": strategy})
            reply.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(questions)))
    return questions / (time.perf_counter() - started)


async def _decode(client: httpx.AsyncClient, requests: int, max_tokens: int) -> float:
    async def one(i: int) -> int:
        reply = await client.post("/v1/chat/completions", json={
            "model": SERVED, "messages": [{"role": "user", "content": question(20)}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.8, "seed": i})
        reply.raise_for_status()
        return int(reply.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
    return tokens / (time.perf_counter() - started)


async def _ttft(client: httpx.AsyncClient, requests: int) -> float:
    times = []
    for i in range(requests):
        started = time.perf_counter()
        async with client.stream("POST", "/v1/chat/completions", json={
                "model": SERVED, "messages": [{"role": "user", "content": question(1000)}],
                "max_tokens": 4, "stream": True, "seed": i}) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():
                if line.startswith("data:") and '"content"' in line:
                    times.append(time.perf_counter() - started)
                    break
    return statistics.median(times)


def measure(base_url: str, workload: str) -> float:
    async def run() -> float:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base_url, timeout=1800, limits=limits) as client:
            if workload == SHORT:
                return await _strategies(client, 40, 8, 4, 48)
            if workload == LONG:
                return await _strategies(client, 700, 4, 2, 32)
            if workload == DECODE:
                return await _decode(client, 16, 96)
            return await _ttft(client, 3)

    return asyncio.run(run())


def side_by_side(servers: Mapping[str, Any], rounds: int) -> list[dict[str, Any]]:
    """Every workload on every server (label → running server), one server working at a time:
    a warm-up first (first requests pay one-time costs), then `rounds` rounds with the
    servers' order rotated every round."""
    labels = list(servers)
    for server in servers.values():
        measure(server.base_url, DECODE)
    results: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        shift = (rnd - 1) % len(labels)
        for workload in WORKLOADS:
            for label in labels[shift:] + labels[:shift]:
                value = measure(servers[label].base_url, workload)
                results.append({"round": rnd, "workload": workload, "server": label,
                                "value": value})
                print(f"round {rnd} {label}: {workload} = {value:.3f}", flush=True)
    return results


def _value(results: Sequence[dict[str, Any]], rnd: int, workload: str, label: str) -> float:
    return next(r["value"] for r in results
                if r["round"] == rnd and r["workload"] == workload and r["server"] == label)


def median_ratios(results: Sequence[dict[str, Any]], labels: Sequence[str],
                  rounds: int) -> dict[str, dict[str, float]]:
    """workload → label → median over rounds of its ratio to the first label's same round."""
    return {w: {label: statistics.median(
        _value(results, n, w, label) / _value(results, n, w, labels[0])
        for n in range(1, rounds + 1)) for label in labels} for w in WORKLOADS}


def medians_table(results: Sequence[dict[str, Any]], labels: Sequence[str],
                  rounds: int) -> str:
    """Markdown: per workload and server, the median value (the median ratio in brackets)."""
    ratios = median_ratios(results, labels, rounds)
    rows = "\n".join(
        f"| {w} | " + " | ".join(
            f"{statistics.median(_value(results, n, w, label) for n in range(1, rounds + 1)):.3f} "
            f"({ratios[w][label]:.3f})" for label in labels) + " |" for w in WORKLOADS)
    return (f"| workload | {' | '.join(labels)} |\n|---|{'---|' * len(labels)}\n" + rows)


def plot_ratios(ratios: dict[str, dict[str, float]], labels: Sequence[str], png: Path,
                title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        ax.bar([w + (k - (len(labels) - 1) / 2) * width for w in range(len(WORKLOADS))],
               [ratios[w][label] for w in WORKLOADS], width, label=label)
    ax.axhline(1, color="grey", linestyle=":")
    ax.set_xticks(range(len(WORKLOADS)), [w.replace(", ", ",\n") for w in WORKLOADS],
                  fontsize=8)
    ax.set(ylabel=f"ratio to {labels[0]} (median over rounds)", title=title)
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    save_figure(fig, png)


def main(argv: Sequence[str]) -> int:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-sizes", default="32,64,128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "block_size.png")
    args = parser.parse_args(own)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model = served_model(args.model)
    labels = [f"block {int(b)}" for b in args.block_sizes.split(",")]
    with contextlib.ExitStack() as stack:
        servers = {label: stack.enter_context(running(spawn_refinery(
            model, SERVED, [*engine_flags, "--block-size", label.split()[1]],
            label.replace(" ", "-")))) for label in labels}
        results = side_by_side(servers, args.rounds)
    plot_ratios(median_ratios(results, labels, args.rounds), labels, args.out_png,
                "KV block size on CPU: cost of each workload (higher is better, TTFT: lower)")
    print(f"""
### KV block size on CPU: throughput and TTFT

- command: `python benchmarks/block_size.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs; model `{model.name}`
- date: {datetime.date.today().isoformat()}; {args.rounds} rounds, server order rotated

Median over rounds (in brackets: median of the per-round ratio to {labels[0]}):

{medians_table(results, labels, args.rounds)}

![block size]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
