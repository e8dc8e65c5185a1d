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
from collections.abc import Sequence
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


def _plot(ratios: dict[str, dict[int, float]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = sorted(next(iter(ratios.values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(blocks)
    for k, block in enumerate(blocks):
        ax.bar([w + (k - (len(blocks) - 1) / 2) * width for w in range(len(WORKLOADS))],
               [ratios[w][block] for w in WORKLOADS], width, label=f"block {block}")
    ax.axhline(1, color="grey", linestyle=":")
    ax.set_xticks(range(len(WORKLOADS)), [w.replace(", ", ",\n") for w in WORKLOADS],
                  fontsize=8)
    ax.set(ylabel=f"ratio to block {blocks[0]} (median over rounds)",
           title="KV block size on CPU: cost of each workload (higher is better, TTFT: lower)")
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
    blocks = [int(b) for b in args.block_sizes.split(",")]
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = {block: stack.enter_context(running(spawn_refinery(
            model, SERVED, [*engine_flags, "--block-size", str(block)], f"block-{block}")))
            for block in blocks}
        for server in servers.values():  # warm-up: first requests pay one-time costs
            measure(server.base_url, DECODE)
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(blocks)
            order = blocks[shift:] + blocks[:shift]
            for workload in WORKLOADS:
                for block in order:
                    value = measure(servers[block].base_url, workload)
                    results.append({"round": rnd, "workload": workload, "block": block,
                                    "value": value})
                    print(f"round {rnd} block {block}: {workload} = {value:.3f}", flush=True)

    def value(rnd: int, workload: str, block: int) -> float:
        return next(r["value"] for r in results
                    if r["round"] == rnd and r["workload"] == workload and r["block"] == block)

    def ratio(workload: str, block: int) -> float:
        return statistics.median(value(n, workload, block) / value(n, workload, blocks[0])
                                 for n in range(1, args.rounds + 1))

    ratios = {w: {b: ratio(w, b) for b in blocks} for w in WORKLOADS}
    _plot(ratios, args.out_png)
    medians = "\n".join(
        f"| {w} | " + " | ".join(
            f"{statistics.median(value(n, w, b) for n in range(1, args.rounds + 1)):.3f} "
            f"({ratios[w][b]:.3f})" for b in blocks) + " |" for w in WORKLOADS)
    print(f"""
### KV block size on CPU: throughput and TTFT

- command: `python benchmarks/block_size.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs; model `{model.name}`
- date: {datetime.date.today().isoformat()}; {args.rounds} rounds, server order rotated

Median over rounds (in brackets: median of the per-round ratio to block {blocks[0]}):

| workload | {" | ".join(f"block {b}" for b in blocks)} |
|---|{"---|" * len(blocks)}
{medians}

![block size]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
