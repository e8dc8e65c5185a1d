"""Self-consistency (N samples) through Refinery vs the same work as one offline vLLM batch,
and vs a naive client that makes N plain calls per question to the same server.

    python benchmarks/strategy_overhead.py [--questions 16 --samples 8 --max-tokens 64
                                            --rounds 3] [-- ENGINE FLAGS]

Ways to draw N samples of each of Q prompts, same model, same engine flags, the same tokens
(`ignore_eos`, fixed `max_tokens`):
- offline: `LLM.generate(prompts, SamplingParams(n=N))`, one batch: the ceiling, zero overhead;
- refinery: Q concurrent requests with `strategy: {name: self_consistency, stop: fixed,
  max_samples: N}` (a vote: its samples carry no certainty, so no logprobs);
- refinery, most_certain: the same with `representative: most_certain`, whose samples carry the
  exact self-certainty (what best-of-N, Borda, DeepConf and DSC ask for);
- naive: Q × N concurrent plain requests to the same server (what a proxy can at best do);
- naive + certainty: the same plain requests asking what a certainty-carrying sub-request asks
  (`logprobs: 0` and the plugin's `vllm_xargs`), i.e. the same engine work as the line above.
The offline engine lives in this process and the server in a subprocess; only one of them
works at a time, rounds alternate the order, and the verdict is per-round ratios, medians over
rounds, against a target of ≥ 0.9 of offline token throughput (docs/benchmarks.md). It also
reports how many prompt tokens the engine computed per strategy request (the rest came from the
prefix cache): the target is one prompt prefill per request.
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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from harness import (
    metric_values,
    offline_llm,
    save_figure,
    server_cpu_seconds,
    split_engine_flags,
)
from tests.servers import REFINERY_READY, free_port, refinery_command, running, spawn

REPO = Path(__file__).resolve().parents[1]
SERVED = "smollm2"
OFFLINE, REFINERY, NAIVE = "offline LLM.generate", "refinery strategy", "naive N calls"
REFINERY_CERTAIN, NAIVE_CERTAIN = "refinery, most_certain", "naive N calls + certainty"
CONTENDERS = (OFFLINE, REFINERY, NAIVE, REFINERY_CERTAIN, NAIVE_CERTAIN)
# What a sub-request that carries the exact certainty asks of vLLM (server.engine.vllm_sampler).
CERTAINTY_FIELDS = {"logprobs": 0,
                    "vllm_xargs": {"refinery_certainty": 1, "refinery_logprob_text": 0}}
# Long enough prompts that prefix sharing matters (several KV blocks each).
TOPICS = ("rivers", "volcanoes", "bees", "lighthouses", "glaciers", "markets", "trains",
          "libraries", "deserts", "orchestras", "forests", "harbours", "bridges", "comets",
          "gardens", "castles")


def prompts(count: int) -> list[str]:
    preamble = ("You are a careful assistant. Read the notes and answer in full sentences. "
                "Notes: " + "Facts are checked twice before they are written down. " * 40)
    return [f"{preamble}\nQuestion {i}: write about {TOPICS[i % len(TOPICS)]}.\nAnswer:"
            for i in range(count)]


@dataclass(frozen=True)
class Run:
    contender: str
    round: int
    wall_s: float
    completion_tokens: int
    questions: int
    # CPU seconds of the server's API process and of its engine processes (core + workers)
    # during the run; None for the offline engine.
    api_cpu_s: float | None = None
    engine_cpu_s: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s

    @property
    def questions_per_s(self) -> float:
        return self.questions / self.wall_s


def run_offline(llm, texts: list[str], samples: int, max_tokens: int, rnd: int) -> Run:
    from vllm import SamplingParams

    params = SamplingParams(n=samples, max_tokens=max_tokens, ignore_eos=True, temperature=0.8,
                            seed=rnd)
    started = time.perf_counter()
    outputs = llm.generate(texts, params, use_tqdm=False)
    wall = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    return Run(OFFLINE, rnd, wall, tokens, len(texts))


async def _post_all(base_url: str, bodies: list[dict]) -> tuple[float, list[dict]]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.post("/v1/completions", json=b)
                                           for b in bodies))
        wall = time.perf_counter() - started
    for response in responses:
        response.raise_for_status()
    return wall, [r.json() for r in responses]


def run_server(base_url: str, texts: list[str], samples: int, max_tokens: int, rnd: int,
               contender: str = REFINERY) -> tuple[Run, list[dict]]:
    common = {"model": SERVED, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.8}
    if contender in (NAIVE, NAIVE_CERTAIN):
        extra = CERTAINTY_FIELDS if contender == NAIVE_CERTAIN else {}
        bodies = [{**common, **extra, "prompt": t, "seed": rnd * 1000 + i * samples + k}
                  for i, t in enumerate(texts) for k in range(samples)]
    else:
        strategy = {"name": "self_consistency", "stop": "fixed", "max_samples": samples,
                    "representative": "most_certain" if contender == REFINERY_CERTAIN
                    else "first"}
        bodies = [{**common, "prompt": t, "seed": rnd * 1000 + i * samples,
                   "strategy": strategy} for i, t in enumerate(texts)]
    wall, replies = asyncio.run(_post_all(base_url, bodies))
    tokens = sum(r["usage"]["completion_tokens"] for r in replies)
    return Run(contender, rnd, wall, tokens, len(texts)), replies


def computed_prompt_tokens(base_url: str) -> tuple[float, float]:
    """(prompt tokens the engine was asked for, of those found in the prefix cache)."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        values = metric_values(client, "vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total")
    return values["vllm:prompt_tokens_total"], values["vllm:prefix_cache_hits_total"]


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kv-cache-space", type=float, default=2.0)
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "strategy_overhead.png")
    return parser.parse_args(own), engine_flags


def _plot(runs: list[Run], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted({r.round for r in runs})
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(CONTENDERS)
    for k, name in enumerate(CONTENDERS):
        values = [next(r.tokens_per_s for r in runs if r.contender == name and r.round == n)
                  for n in rounds]
        ax.bar([n + (k - (len(CONTENDERS) - 1) / 2) * width for n in rounds], values, width,
               label=name)
    ax.set(title="Self-consistency, N samples per question: output tokens/s per round",
           xlabel="round", ylabel="tokens/s", xticks=rounds)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, png)


def main(argv: Sequence[str]) -> int:
    args, engine_flags = _parse(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{args.kv_cache_space:g}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from server.embedded_model import ensure_embedded_model
    from server.settings import Settings

    model = ensure_embedded_model(Settings().cache_dir)
    texts = prompts(args.questions)

    llm = offline_llm(model, engine_flags)  # exactly the engine arguments of `refinery serve`
    logs = Path(tempfile.mkdtemp(prefix="refinery-strategy-overhead-"))
    port = free_port()
    server = spawn(refinery_command(port, str(model), "--served-model-name", SERVED,
                                    *engine_flags), logs / "refinery.log", port=port,
                   ready_paths=REFINERY_READY)
    runs: list[Run] = []
    prefill_per_request: list[float] = []
    with running(server):
        base = server.base_url
        run_offline(llm, texts[:2], 2, 4, 0)  # warm both up
        run_server(base, texts[:2], 2, 4, 0)
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(CONTENDERS)
            order = [*CONTENDERS[shift:], *CONTENDERS[:shift]]  # rotate who goes first
            for name in order:
                if name == OFFLINE:
                    runs.append(run_offline(llm, texts, args.samples, args.max_tokens, rnd))
                else:
                    asked_before, hits_before = computed_prompt_tokens(base)
                    api_before, engine_before = server_cpu_seconds(server.pid)
                    run, _ = run_server(base, texts, args.samples, args.max_tokens, rnd, name)
                    api_after, engine_after = server_cpu_seconds(server.pid)
                    runs.append(replace(run, api_cpu_s=api_after - api_before,
                                        engine_cpu_s=engine_after - engine_before))
                    asked, hits = computed_prompt_tokens(base)
                    if name == REFINERY:
                        computed = (asked - asked_before) - (hits - hits_before)
                        prefill_per_request.append(computed / len(texts))
                print(f"round {rnd}: {name}: {runs[-1].tokens_per_s:.0f} tok/s", flush=True)
        prompt_len = len(llm.get_tokenizer()(texts[0]).input_ids)

    def ratio(name: str, base: str = OFFLINE) -> float:
        """Median over rounds of name's output tokens/s over base's (equal tokens and
        questions per run, so also the ratio of questions/s)."""
        return statistics.median(
            next(r for r in runs if r.contender == name and r.round == n).tokens_per_s
            / next(r for r in runs if r.contender == base and r.round == n).tokens_per_s
            for n in range(1, args.rounds + 1))

    _plot(runs, args.out_png)
    def seconds(value: float | None) -> str:
        return "" if value is None else f"{value:.1f}"

    rows = "\n".join(f"| {r.round} | {r.contender} | {r.tokens_per_s:.0f} | "
                     f"{r.questions_per_s:.2f} | {r.wall_s:.1f} | {seconds(r.api_cpu_s)} | "
                     f"{seconds(r.engine_cpu_s)} |" for r in runs)
    print(f"""
### Self-consistency N={args.samples}: Refinery vs one offline vLLM batch vs naive calls

- command: `python benchmarks/strategy_overhead.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs
- model: `{model.name}`; engine flags as `refinery serve` resolves them (prefix caching on,
  chunked prefill off on CPU) {shlex.join(engine_flags)}
- date: {datetime.date.today().isoformat()}
- workload: {args.questions} questions (prompt ≈ {prompt_len} tokens), {args.samples} samples
  each, {args.max_tokens} tokens per sample (`ignore_eos`), temperature 0.8; {args.rounds}
  rounds, order rotated per round

| round | contender | output tok/s | questions/s | wall s | API process CPU s | engine CPU s |
|---|---|---|---|---|---|---|
{rows}

| median over rounds of per-round ratios | target | measured |
|---|---|---|
| Refinery strategy / naive N calls, questions/s | ≥ 1.0 | {ratio(REFINERY, NAIVE):.3f} |
| Refinery strategy / offline batch | ≥ 0.95 | {ratio(REFINERY):.3f} |
| naive N calls / offline batch | | {ratio(NAIVE):.3f} |
| Refinery most_certain / naive N calls + certainty (equal engine work) | ≥ 1.0 | \
{ratio(REFINERY_CERTAIN, NAIVE_CERTAIN):.3f} |
| Refinery most_certain / Refinery strategy (the price of certainty) | | \
{ratio(REFINERY_CERTAIN, REFINERY):.3f} |
| naive + certainty / naive (the same price, plain calls) | | \
{ratio(NAIVE_CERTAIN, NAIVE):.3f} |
| prompt tokens computed per strategy request | ≈ 1 prompt ({prompt_len}) | \
{statistics.median(prefill_per_request):.0f} |

![strategy overhead]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
