"""Confidence-guided sampling: DeepConf (low/high, exact and top-k confidence) and DSC against
fixed self-consistency, ASC and ESC at the same budget, live through the server; plus what a
per-token watcher costs the engine.

    python benchmarks/confidence.py [--questions 60 --task chain_sum --concurrency 8]
                                    [--budget 32] [--model FOLDER] [-- ENGINE FLAGS]

Every configuration answers the same seeded questions. Reported per configuration: accuracy,
samples and generated tokens per question (every sample, terminated and aborted ones included),
terminated traces, p50 latency. For DSC also the Spearman correlation between its difficulty
prior (the first window's mean self-certainty) and the samples ASC's criterion needed on that
question. The watcher's cost is measured in process, on the same engine arguments: the same
batch of samples with a no-op watcher on every token against none, alternated over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness import (
    Question,
    load_questions,
    run_questions,
    scatter_plot,
    served_model,
    spawn_refinery,
    split_engine_flags,
    task_parser,
)
from strategies.answers import answers_equivalent
from tests.servers import running

REPO = Path(__file__).resolve().parents[1]
SERVED = "model"
SUFFIX = " Think briefly, then end with 'The answer is <number>.'"
# The paper's 2048-token groups never fill on answers of tens of tokens: DeepConf is run with
# the smallest group the option allows, so that termination can happen at all.
GROUP_WINDOW = 16
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
}
HEADER = ("| config | accuracy % | samples / question | generated tokens / question "
          "| tokens vs SC | terminated / question | p50 latency ms |\n"
          "|---|---|---|---|---|---|---|")


def configs(budget: int) -> dict[str, dict[str, Any]]:
    deepconf = {"name": "deepconf", "max_samples": budget, "warmup": max(1, budget // 2),
                "group_window": GROUP_WINDOW}
    return {
        f"sc@{budget}": {"name": "self_consistency", "stop": "fixed", "max_samples": budget},
        "asc": {"name": "self_consistency", "stop": "asc", "max_samples": budget},
        "esc": {"name": "self_consistency", "stop": "esc", "max_samples": budget},
        "dsc": {"name": "dsc", "max_samples": budget},
        "deepconf-low exact": {**deepconf, "eta": 10},
        "deepconf-high exact": {**deepconf, "eta": 90},
        "deepconf-low topk": {**deepconf, "eta": 10, "confidence": "topk"},
        "deepconf-high topk": {**deepconf, "eta": 90, "confidence": "topk"},
    }


@dataclass(frozen=True)
class Answer:
    correct: bool
    samples: int
    tokens: int
    terminated: int
    latency_s: float
    details: dict[str, Any]


async def ask(client: httpx.AsyncClient, q: Question, spec: dict[str, Any],
              max_tokens: int) -> Answer:
    body = {"model": SERVED, "messages": [{"role": "user", "content": q.prompt}],
            "temperature": 0.7, "max_tokens": max_tokens, "seed": q.seed,
            "strategy": {**spec, "answer_format": "number", "return_candidates": True}}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body)
    latency = time.perf_counter() - started
    response.raise_for_status()
    info = response.json()["strategy"]
    answer = info["answer"]
    return Answer(answer is not None and answers_equivalent(answer, q.gold),
                  info["usage"]["sub_requests"], info["usage"]["completion_tokens"],
                  sum(1 for c in info["candidates"] if c["terminated"]), latency, info)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's ρ (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def watcher_cost(model: Path, engine_flags: Sequence[str], rounds: int, samples: int,
                 tokens: int) -> list[float]:
    """Per round: seconds with a no-op watcher on every token / seconds without one."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from server.cli import resolve_serve_args
    from server.engine.vllm import VllmEngine

    _, args = resolve_serve_args([str(model), "--served-model-name", SERVED, *engine_flags])

    async def measure() -> list[float]:
        engine = await VllmEngine.start(args)
        request = ChatCompletionRequest.model_validate({
            "model": SERVED, "messages": [{"role": "user", "content": "Count to 1000."}],
            "temperature": 0.8, "max_tokens": tokens, "ignore_eos": True, "seed": 1})
        calls = 0

        def watch(values: Sequence[float]) -> bool:
            nonlocal calls
            calls += 1
            return False

        async def batch(watched: bool) -> float:
            opened = await engine.open_sampler(request, f"watch-{time.monotonic_ns()}", samples)
            started = time.perf_counter()
            await asyncio.gather(*opened.sampler.submit(
                samples, watch=watch if watched else None))
            return time.perf_counter() - started

        try:
            await batch(False)  # warm-up
            ratios = []
            for n in range(rounds):
                order = (True, False) if n % 2 == 0 else (False, True)
                timing = {watched: await batch(watched) for watched in order}
                ratios.append(timing[True] / timing[False])
            assert calls >= rounds * samples  # the watcher really ran
            return ratios
        finally:
            await engine.shutdown()

    return asyncio.run(measure())


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, engine_flags = split_engine_flags(argv)
    parser = task_parser(__doc__.split("\n\n")[0], questions=60, max_tokens=64,
                         png=REPO / "docs" / "confidence.png")
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--watcher-rounds", type=int, default=4)
    return parser.parse_args(own), engine_flags


def main(argv: Sequence[str]) -> int:
    args, engine_flags = _parse(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    model = served_model(args.model)
    questions = load_questions(args.task, args.questions, args.seed, SUFFIX, TASK_OPTIONS)
    server = spawn_refinery(model, SERVED, engine_flags, "confidence")
    rows: list[dict[str, Any]] = []
    by_config: dict[str, list[Answer]] = {}
    with running(server):
        for name, spec in configs(args.budget).items():
            answers = asyncio.run(run_questions(
                server.base_url, questions,
                functools.partial(ask, spec=spec, max_tokens=args.max_tokens),
                args.concurrency, name))
            by_config[name] = answers
            rows.append({
                "config": name,
                "accuracy": statistics.mean(a.correct for a in answers),
                "samples": statistics.mean(a.samples for a in answers),
                "tokens": statistics.mean(a.tokens for a in answers),
                "terminated": statistics.mean(a.terminated for a in answers),
                "p50_ms": 1000 * statistics.median(a.latency_s for a in answers),
            })
    ratios = watcher_cost(model, engine_flags, args.watcher_rounds, 16, 128)
    dsc = [(a.details.get("first_window_certainty"), a.details["recorded_size"])
           for a in by_config["dsc"]]
    dsc = [(c, n) for c, n in dsc if c is not None]
    rho = spearman([c for c, _ in dsc], [n for _, n in dsc]) if len(dsc) > 2 else float("nan")
    title = f"Confidence-guided sampling\nreasoning-gym {args.task}, {model.name}"
    scatter_plot(rows, "tokens", "accuracy", title,
                 "generated tokens per question (every sample)", "accuracy %", args.out_png,
                 y_scale=100)
    sc_tokens = rows[0]["tokens"]
    table = "\n".join(
        f"| {r['config']} | {100 * r['accuracy']:.1f} | {r['samples']:.1f} | {r['tokens']:.0f} | "
        f"{100 * (r['tokens'] / sc_tokens - 1):+.0f}% | {r['terminated']:.1f} | "
        f"{r['p50_ms']:.0f} |" for r in rows)
    print(f"""
### Confidence-guided sampling: DeepConf and DSC

- command: `python benchmarks/confidence.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs; model `{model.name}`
- date: {datetime.date.today().isoformat()}
- task: reasoning-gym `{args.task}` (seed {args.seed}), {args.questions} questions,
  "{SUFFIX.strip()}", temperature 0.7, max {args.max_tokens} tokens, answer_format `number`;
  {args.concurrency} questions in flight; budget {args.budget} samples; DeepConf warm-up
  {max(1, args.budget // 2)} and group window {GROUP_WINDOW} tokens, strategy defaults
  otherwise

{HEADER}
{table}

- DSC's difficulty prior (first window's mean self-certainty) against the samples ASC's
  criterion needed on the same question: Spearman ρ = {rho:.2f} over {len(dsc)} questions
  (negative = less certain questions needed more samples, as the prior assumes)
- a per-token watcher (no-op, called on every token of 16 samples × 128 tokens, in process):
  time with / without, per round {', '.join(f'{r:.3f}' for r in ratios)};
  median {statistics.median(ratios):.3f}

![confidence]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
