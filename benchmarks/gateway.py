"""The price of gateway mode: self-consistency through `refinery serve --backend` in front of
plain `vllm serve`, vs the same strategy inside an in-process `refinery serve`. Same model, same
engine flags, same questions and load.

    python benchmarks/gateway.py [--questions 16 --samples 8 --rounds 3 --concurrency 4
                                  --max-tokens 48] [-- ENGINE FLAGS FOR BOTH ENGINES]

Only one engine runs at a time; the order alternates per round (gateway first, then in-process,
then the other way round), so a drift of the machine hits both alike. Per side and round:
questions/s, p50 latency, completion tokens, and the prompt tokens the ENGINE computed (its
prefix-cache counters: queries − hits), which is where n-window fan-out shows: the gateway sends
each window as one request with n, so the backend prefills each prompt once, like the
in-process sampler. The verdict is per-round gateway/in-process ratios and their medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness import prefix_cache_counters, save_figure, served_model, split_engine_flags
from tests.servers import (
    ServerProcess,
    free_port,
    refinery_command,
    running,
    spawn,
    start_vllm,
)

REPO = Path(__file__).resolve().parents[1]
SERVED = "smollm2"
GATEWAY, IN_PROCESS = "gateway → vllm serve", "in-process refinery"


@dataclass(frozen=True)
class Measurement:
    side: str
    round: int
    seconds: float
    latencies: tuple[float, ...]
    completion_tokens: int
    prompt_tokens_computed: float

    @property
    def questions_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def p50_s(self) -> float:
        return statistics.median(self.latencies)


def questions(count: int) -> list[str]:
    """Deterministic one-digit sums, one per question (distinct prompts)."""
    return [f"What is {i % 9 + 1} + {(i * 7) % 9 + 1}? Give only the final answer."
            for i in range(count)]


def prompt_tokens_computed(engine_url: str) -> float:
    """Prompt tokens the engine prefilled so far: prefix-cache queries − hits."""
    hits, queries = prefix_cache_counters(engine_url)
    return queries - hits


async def load(url: str, prompts: list[str], samples: int, max_tokens: int,
               concurrency: int) -> tuple[float, list[float], int]:
    """Every prompt as one self-consistency request, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        nonlocal tokens
        async with gate:
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json={
                "model": SERVED, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.7, "max_tokens": max_tokens, "seed": 1,
                "strategy": {"name": "self_consistency", "max_samples": samples}})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, prompt) for prompt in prompts))
        return time.perf_counter() - started, latencies, tokens


@contextlib.contextmanager
def side_servers(side: str, model: Path, flags: list[str], logs: Path
                 ) -> Iterator[tuple[str, str]]:
    """(URL the load goes to, URL of the engine's metrics) for one side."""
    if side == IN_PROCESS:
        port = free_port()
        server = spawn(refinery_command(port, str(model), "--served-model-name", SERVED, *flags),
                       logs / f"refinery-{port}.log", port=port, ready_paths=("/ready",))
        with running(server) as live:
            yield live.base_url, live.base_url
        return
    with running(start_vllm(logs, model, *flags)) as engine:
        port = free_port()
        gateway: ServerProcess = spawn(
            refinery_command(port, "--backend", f"{engine.base_url}/v1"),
            logs / f"gateway-{port}.log", port=port, ready_paths=("/ready",))
        with running(gateway) as live:
            yield live.base_url, engine.base_url


def measure(side: str, round_: int, args: argparse.Namespace, model: Path, flags: list[str],
            logs: Path) -> Measurement:
    prompts = questions(args.questions)
    with side_servers(side, model, flags, logs) as (url, engine):
        asyncio.run(load(url, prompts[:2], args.samples, args.max_tokens, 2))  # warm-up
        before = prompt_tokens_computed(engine)
        seconds, latencies, tokens = asyncio.run(
            load(url, prompts, args.samples, args.max_tokens, args.concurrency))
        computed = prompt_tokens_computed(engine) - before
    result = Measurement(side, round_, seconds, tuple(latencies), tokens, computed)
    print(f"round {round_} {side:>22}: {result.questions_per_s:.3f} q/s, p50 "
          f"{result.p50_s:.2f} s, {tokens} completion tokens, {computed:.0f} prompt tokens "
          "computed", flush=True)
    return result


def plot(results: list[Measurement], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for side, colour in ((GATEWAY, "tab:orange"), (IN_PROCESS, "tab:blue")):
        mine = [r for r in results if r.side == side]
        axes[0].plot([r.round for r in mine], [r.questions_per_s for r in mine], "o-",
                     color=colour, label=side)
        axes[1].plot([r.round for r in mine], [r.prompt_tokens_computed for r in mine], "o-",
                     color=colour, label=side)
    axes[0].set(title="self-consistency questions/s", xlabel="round")
    axes[1].set(title="prompt tokens the engine computed", xlabel="round")
    axes[0].legend(fontsize=8)
    save_figure(fig, png)


def main(argv: list[str]) -> int:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", type=Path, default=None, help="default: the embedded model")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "gateway.png")
    args = parser.parse_args(own)
    model = served_model(args.model)
    # As `refinery serve` applies on CPU; the same for plain vllm serve (start_vllm).
    flags = ["--enforce-eager", "--block-size", "32", *engine_flags]
    logs = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    results: list[Measurement] = []
    for round_ in range(1, args.rounds + 1):
        order = (GATEWAY, IN_PROCESS) if round_ % 2 else (IN_PROCESS, GATEWAY)
        for side in order:
            results.append(measure(side, round_, args, model, flags, logs))
    ratios = []
    for round_ in range(1, args.rounds + 1):
        gateway, local = (next(r for r in results if r.round == round_ and r.side == side)
                          for side in (GATEWAY, IN_PROCESS))
        ratios.append((gateway.questions_per_s / local.questions_per_s,
                       gateway.p50_s / local.p50_s,
                       gateway.prompt_tokens_computed / max(1.0, local.prompt_tokens_computed)))
    print(f"\n{datetime.date.today()} {platform.node()} {platform.processor() or 'cpu'}; "
          f"command: python benchmarks/gateway.py {shlex.join(argv)}")
    print("round | q/s gateway/in-process | p50 latency gateway/in-process | "
          "prompt tokens computed gateway/in-process")
    for round_, (qps, p50, prompt) in enumerate(ratios, 1):
        print(f"{round_} | {qps:.2f} | {p50:.2f} | {prompt:.2f}")
    medians = [statistics.median(column) for column in zip(*ratios, strict=True)]
    print(f"median | {medians[0]:.2f} | {medians[1]:.2f} | {medians[2]:.2f}")
    plot(results, args.png)
    print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

