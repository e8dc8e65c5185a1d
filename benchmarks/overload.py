"""Refinery at twice its admission bound, and a storm of clients that drop strategy requests.

    python benchmarks/overload.py [--duration 60 --rounds 2 --factor 2 --samples 8
                                   --max-tokens 32 --storm-clients 50] [-- ENGINE FLAGS]

One `refinery serve` of the embedded model (defaults: admission bound max_num_seqs × 2). Closed
loop clients, half of the offered sequences as plain completions and half as self-consistency
requests of `--samples` samples (each holds that many sequences), every request `ignore_eos`
with `--max-tokens` tokens. A client that gets a 429 waits its `Retry-After` and sends again, as
the openai SDK does. Two loads alternate for `--rounds` rounds of `--duration` seconds:
- at the bound: clients offering exactly the bound's sequences (the engine saturated, nothing
  refused in principle): the reference throughput;
- overloaded: clients offering `--factor` × the bound.
Each load reports every response by status (anything but 200 and 429 is a failure, a client
timeout too), p50/p99 latency of the admitted requests, completion tokens/s of the requests
that finished inside the window, the server's RSS (API process and engine processes), and the
seconds until `refinery_subrequests_running` and `refinery_outstanding_sequences` are back
to 0 once the load stops.

Then the disconnect storm, `--rounds` times: `--storm-clients` clients open streaming
self-consistency requests (4 samples, 512 tokens each), wait until each is admitted and
tokens flow, and all drop their connections at once. Measured: the time from the drop until
every sub-request (`refinery_subrequests_running`) and every engine request
(`vllm:num_requests_running`) is gone, against the engine's step time at that batch; then a
plain request must still be served.

Prints Markdown tables (docs/reliability.md) and writes docs/overload.png.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

from harness import (
    metric_values,
    save_figure,
    served_model,
    server_cpu_seconds,
    server_rss_mib,
    spawn_refinery,
    split_engine_flags,
)
from tests.servers import running

REPO = Path(__file__).resolve().parents[1]
SERVED = "smollm2"
PROMPT = "Write a short story about {topic}, number {n}:"
TOPICS = ("a lighthouse", "a glacier", "a market", "a comet", "an orchard", "a harbour")


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """CPU seconds so far of the server's API process, of its engine processes, and of this
    process (the load clients): on one machine they share the cores."""
    import psutil

    times = psutil.Process().cpu_times()
    return (*server_cpu_seconds(pid), times.user + times.system)


@dataclass
class LoadRun:
    name: str
    round: int
    factor: float
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    tokens_in_window: int = 0
    duration_s: float = 0.0
    rss_before_mib: float = 0.0
    rss_after_mib: float = 0.0
    drain_s: float = 0.0
    # (s, outstanding sequences, engine requests running, waiting), once a second
    trace: list[tuple[float, ...]] = field(default_factory=list)
    by_kind: Counter[tuple[str, int]] = field(default_factory=Counter)  # (plain|strategy, status)
    cpu_s: tuple[float, float, float] = (0.0, 0.0, 0.0)  # API, engine, clients
    errors: dict[str, str] = field(default_factory=dict)  # first message of each error kind

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_in_window / self.duration_s

    @property
    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if status not in ("200", "429"))

    def latency(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _client_loop(http: aiohttp.ClientSession, kind: str, body: dict, run: LoadRun,
                       deadline: float) -> None:
    n = 0
    while time.monotonic() < deadline:
        n += 1
        sent = time.monotonic()
        try:
            async with http.post("/v1/completions", json={
                    **body, "prompt": PROMPT.format(topic=TOPICS[n % len(TOPICS)], n=n)}
                    ) as response:
                status = response.status
                payload = await response.json() if status == 200 else None
                retry_after = float(response.headers.get("retry-after", "1"))
        except TimeoutError:
            run.statuses["client timeout"] += 1
            continue
        except aiohttp.ClientError as error:
            run.statuses[type(error).__name__] += 1
            run.errors.setdefault(type(error).__name__, repr(error))
            continue
        finished = time.monotonic()
        run.statuses[str(status)] += 1
        run.by_kind[kind, status] += 1
        if status == 200:
            run.latencies_s.append(finished - sent)
            if finished <= deadline:
                run.tokens_in_window += payload["usage"]["completion_tokens"]
        elif status == 429:
            await asyncio.sleep(retry_after)


TRACED = ("refinery_outstanding_sequences", "vllm:num_requests_running",
          "vllm:num_requests_waiting")


async def _offer(base_url: str, run: LoadRun, bound: int, samples: int, max_tokens: int,
                 duration_s: float, monitor: httpx.Client) -> None:
    """Closed-loop clients offering `run.factor` × `bound` sequences for `duration_s`.

    The clients use aiohttp: on a 2-core machine the load generator shares the cores with the
    server, and httpx's client costs several times more CPU per request."""
    offered = round(run.factor * bound)
    plain_clients = offered // 2
    strategy_clients = (offered - plain_clients) // samples
    common = {"model": SERVED, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.8}
    strategy = {**common, "strategy": {"name": "self_consistency", "stop": "fixed",
                                       "max_samples": samples}}
    clients = plain_clients + strategy_clients
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as http:
        started = time.monotonic()
        deadline = started + duration_s
        loops = [asyncio.create_task(_client_loop(http, "plain", common, run, deadline))
                 for _ in range(plain_clients)]
        loops += [asyncio.create_task(_client_loop(http, "strategy", strategy, run, deadline))
                  for _ in range(strategy_clients)]
        while not all(loop.done() for loop in loops):
            value = await asyncio.to_thread(metric_values, monitor, *TRACED)
            run.trace.append((time.monotonic() - started, *(value[name] for name in TRACED)))
            await asyncio.sleep(1.0)
        await asyncio.gather(*loops)
    run.duration_s = duration_s


def drained(monitor: httpx.Client, names: Sequence[str], timeout_s: float,
            poll_s: float = 0.01) -> float:
    """Seconds until every metric in `names` reads 0 (inf if not within `timeout_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not any(metric_values(monitor, *names).values()):
            return time.monotonic() - started
        time.sleep(poll_s)
    return float("inf")


@dataclass(frozen=True)
class StormRun:
    round: int
    admitted: int
    refused: int
    running_before: float
    drop_to_zero_s: float
    step_s: float
    served_after: bool
    rss_before_mib: float
    rss_after_mib: float


async def _storm_clients(base_url: str, clients: int, admitted: list[bool],
                         flowing: asyncio.Event, drop: asyncio.Event) -> None:
    body = {"model": SERVED, "max_tokens": 512, "ignore_eos": True, "temperature": 0.8,
            "stream": True, "strategy": {"name": "self_consistency", "stop": "fixed",
                                         "max_samples": 4}}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as http:
        async def one(n: int) -> None:
            async with http.stream("POST", "/v1/completions", json={
                    **body, "prompt": PROMPT.format(topic=TOPICS[n % len(TOPICS)], n=n)}) as r:
                admitted.append(r.status_code == 200)
                # Kept referenced: a dropped line iterator closes the response (httpx).
                lines = r.aiter_lines()
                if r.status_code == 200:
                    await anext(lines)  # ": refinery: strategy running"
                if len(admitted) == clients:
                    flowing.set()
                await drop.wait()  # leaving the block closes the connection mid-response

        await asyncio.gather(*(one(n) for n in range(clients)))


def storm(base_url: str, pid: int, clients: int, rnd: int) -> StormRun:
    monitor = httpx.Client(base_url=base_url, timeout=30)
    rss_before = server_rss_mib(pid)
    admitted: list[bool] = []

    async def main() -> tuple[float, float, float]:
        flowing, drop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(_storm_clients(base_url, clients, admitted, flowing, drop))
        await asyncio.wait_for(flowing.wait(), timeout=300)
        await asyncio.sleep(2.0)  # every admitted request is decoding now
        before = metric_values(monitor, "vllm:generation_tokens_total",
                         "refinery_subrequests_running")
        await asyncio.sleep(2.0)
        after = metric_values(monitor, "vllm:generation_tokens_total")
        tokens_per_s = (after["vllm:generation_tokens_total"]
                        - before["vllm:generation_tokens_total"]) / 2.0
        running = before["refinery_subrequests_running"]
        dropped = time.monotonic()
        drop.set()
        await task
        waited = await asyncio.to_thread(
            drained, monitor, ("refinery_subrequests_running", "vllm:num_requests_running"), 60)
        since_drop = time.monotonic() - dropped if waited != float("inf") else waited
        # All running sequences advance one token per step: step time = running / tokens/s.
        return running, since_drop, running / tokens_per_s if tokens_per_s else float("nan")

    running_before, waited, step_s = asyncio.run(main())
    served = httpx.post(f"{base_url}/v1/completions", timeout=120, json={
        "model": SERVED, "prompt": "Say hello:", "max_tokens": 4}).status_code == 200
    return StormRun(rnd, sum(admitted), len(admitted) - sum(admitted), running_before, waited,
                     step_s, served, rss_before, server_rss_mib(pid))


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--storm-clients", type=int, default=50)
    parser.add_argument("--kv-cache-space", type=float, default=2.0)
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "overload.png")
    return parser.parse_args(own), engine_flags


def _plot(runs: list[LoadRun], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (trace, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for run, color in zip((r for r in runs if r.round == 1), ("tab:blue", "tab:orange"),
                          strict=False):
        if not run.trace:
            continue
        seconds, outstanding, engine_running, _ = zip(*run.trace, strict=True)
        trace.plot(seconds, outstanding, color=color, label=f"{run.name}: outstanding")
        trace.plot(seconds, engine_running, color=color, linestyle=":",
                   label=f"{run.name}: engine running")
    trace.set(title="Sequences held (admission) and running (engine), round 1",
              xlabel="seconds into the load", ylabel="sequences")
    trace.legend(fontsize=8)
    labels = [f"{r.name}\nround {r.round}" for r in runs]
    bars.bar(labels, [r.tokens_per_s for r in runs],
             color=["tab:orange" if r.factor > 1 else "tab:blue" for r in runs])
    bars.set(title="Completion tokens/s of admitted requests", ylabel="tokens/s")
    bars.tick_params(axis="x", labelsize=8)
    save_figure(fig, png)


def main(argv: Sequence[str]) -> int:
    args, engine_flags = _parse(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{args.kv_cache_space:g}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    model = served_model(None)
    server = spawn_refinery(model, SERVED, engine_flags, "overload")
    runs: list[LoadRun] = []
    storms: list[StormRun] = []
    with running(server):
        base = server.base_url
        monitor = httpx.Client(base_url=base, timeout=30)
        bound = int(metric_values(monitor, "refinery_outstanding_sequences_limit")[
            "refinery_outstanding_sequences_limit"])
        httpx.post(f"{base}/v1/completions", timeout=120,
                   json={"model": SERVED, "prompt": "Warm up:", "max_tokens": 4})
        rss_start = server_rss_mib(server.pid)
        for rnd in range(1, args.rounds + 1):
            loads = [("at the bound", 1.0), (f"{args.factor:g}x the bound", args.factor)]
            if rnd % 2 == 0:
                loads.reverse()
            for name, factor in loads:
                run = LoadRun(name, rnd, factor, rss_before_mib=server_rss_mib(server.pid))
                before = cpu_seconds(server.pid)
                asyncio.run(_offer(base, run, bound, args.samples, args.max_tokens,
                                   args.duration, monitor))
                run.cpu_s = tuple(b - a for a, b in zip(before, cpu_seconds(server.pid),
                                                        strict=True))  # type: ignore[assignment]
                run.drain_s = drained(monitor, ("refinery_subrequests_running",
                                                "refinery_outstanding_sequences"), 60)
                run.rss_after_mib = server_rss_mib(server.pid)
                runs.append(run)
                print(f"round {rnd}: {name}: {dict(run.statuses)}, "
                      f"{run.tokens_per_s:.0f} tok/s {run.errors or ''}", flush=True)
        for rnd in range(1, args.rounds + 1):
            storms.append(storm(base, server.pid, args.storm_clients, rnd))
            print(f"storm {rnd}: {storms[-1]}", flush=True)
        rss_end = server_rss_mib(server.pid)
    _plot(runs, args.out_png)

    ratio = statistics.median(
        next(r for r in runs if r.round == n and r.factor > 1).tokens_per_s
        / next(r for r in runs if r.round == n and r.factor == 1).tokens_per_s
        for n in range(1, args.rounds + 1))
    def admitted(run: LoadRun, status: int) -> str:
        return f"{run.by_kind['plain', status]} / {run.by_kind['strategy', status]}"

    rows = "\n".join(
        f"| {r.round} | {r.name} | {admitted(r, 200)} | {admitted(r, 429)} | "
        f"{r.failures} | {r.latency(0.5):.1f} | {r.latency(0.99):.1f} | {r.tokens_per_s:.0f} | "
        f"{r.rss_before_mib:.0f} → {r.rss_after_mib:.0f} | {r.drain_s:.2f} | "
        f"{r.cpu_s[0]:.0f} / {r.cpu_s[1]:.0f} / {r.cpu_s[2]:.0f} |" for r in runs)
    storm_rows = "\n".join(
        f"| {s.round} | {s.admitted} | {s.refused} | {s.running_before:.0f} | "
        f"{s.drop_to_zero_s:.2f} | {s.step_s:.2f} | {'yes' if s.served_after else 'NO'} | "
        f"{s.rss_before_mib:.0f} → {s.rss_after_mib:.0f} |" for s in storms)
    print(f"""
### Overload: {args.factor:g}× the admission bound, and a disconnect storm

- command: `python benchmarks/overload.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs
- model: `{model.name}` (embedded), `refinery serve` defaults {shlex.join(engine_flags)};
  admission bound {bound} sequences
- date: {datetime.date.today().isoformat()}
- load: closed-loop clients, half the offered sequences plain completions, half
  self-consistency N={args.samples} (fixed); {args.max_tokens} tokens each (`ignore_eos`);
  {args.duration:g} s per load; a 429 waits `Retry-After` and retries

| round | load | 200 | 429 | other | p50 s | p99 s | tokens/s | RSS MiB | s to 0 | CPU s |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

Columns: 200 and 429 count plain / strategy requests; "other" counts every response that was
neither 200 nor 429 (5xx, client timeouts, transport errors); p50/p99 are the admitted
requests' latencies; "RSS MiB" is the server's (API + engine processes) before → after the
load; "s to 0" the seconds until no sub-request and no outstanding sequence remained once the
load stopped; "CPU s" the CPU seconds of the server's API process / its engine processes / the
load clients during the load.

Overloaded / at-the-bound throughput, median of per-round ratios: **{ratio:.3f}**; server RSS
{rss_start:.0f} MiB after warm-up → {rss_end:.0f} MiB at the end.

Disconnect storm: {args.storm_clients} clients, self-consistency N=4, 512 tokens, dropped
together once every admitted request decodes ("running at drop": sub-requests running; "s to
0": seconds from the drop until 0 sub-requests and 0 engine requests run; "step s": the
engine's step time at that batch; "served after": a plain request answered 200 next):

| round | admitted | 429 | running at drop | s to 0 | step s | served after | RSS MiB |
|---|---|---|---|---|---|---|---|
{storm_rows}

![overload]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    failed = sum(r.failures for r in runs) + sum(not s.served_after for s in storms)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
