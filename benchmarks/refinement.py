"""Refinement vs sampling: accuracy and tokens per question of a single sample,
self-consistency@8, `self_refine` (critique and If-or-Else) and `adaptive_refine`, live through
the server on reasoning-gym tasks.

    python benchmarks/refinement.py [--questions 100 --task chain_sum --concurrency 8]
                                    [--model FOLDER] [-- ENGINE FLAGS]

Every configuration answers the same seeded questions. Reported per configuration: accuracy,
completion tokens per question (every draft, critique and aborted sample), sub-requests, p50
latency, and the share of prompt tokens the engine read from its prefix cache while that
configuration ran (vLLM's own counters: a refinement step continues the question and the draft,
so it should reuse their full KV blocks). For `adaptive_refine` also the share of questions
routed hard and the tokens spent on easy vs hard ones.
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
    prefix_cache_counters,
    run_questions,
    scatter_plot,
    served_model,
    spawn_refinery,
    split_engine_flags,
    task_parser,
)
from strategies.answers import answers_equivalent, extract_answer, parse_answer_format
from tests.servers import running

REPO = Path(__file__).resolve().parents[1]
BLOCK = 128  # vLLM-CPU's default KV block size
SERVED = "model"
HEADER = ("| config | accuracy % | completion tokens / question | sub-requests "
          "| refine iterations | p50 latency ms | prompt tokens from prefix cache |\n"
          "|---|---|---|---|---|---|---|")
SUFFIX = " Think briefly, then end with 'The answer is <number>.'"
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
}
CONFIGS: dict[str, dict[str, Any] | None] = {
    "single": None,
    "sc@8": {"name": "self_consistency", "stop": "fixed", "max_samples": 8},
    "self_refine critique": {"name": "self_refine", "mode": "critique"},
    "self_refine ioe": {"name": "self_refine", "mode": "ioe"},
    "adaptive_refine": {"name": "adaptive_refine"},
}


@dataclass(frozen=True)
class Answer:
    correct: bool
    completion_tokens: int
    sub_requests: int
    latency_s: float
    route: str | None = None
    iterations: int | None = None


def correct(text_answer: str | None, gold: str) -> bool:
    return text_answer is not None and answers_equivalent(text_answer, gold)


async def ask(client: httpx.AsyncClient, q: Question, spec: dict[str, Any] | None,
              max_tokens: int) -> Answer:
    body: dict[str, Any] = {"model": SERVED, "messages": [{"role": "user", "content": q.prompt}],
                            "temperature": 0.7, "max_tokens": max_tokens, "seed": q.seed}
    if spec is not None:
        body["strategy"] = {**spec, "answer_format": "number"}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body)
    latency = time.perf_counter() - started
    response.raise_for_status()
    reply = response.json()
    info = reply.get("strategy")
    if info is None:
        answer = extract_answer(reply["choices"][0]["message"]["content"],
                                parse_answer_format("number"))
        return Answer(correct(answer, q.gold), reply["usage"]["completion_tokens"], 1, latency)
    iterations = None
    if "iterations" in info:
        iterations = len(info["iterations"]) - 1
    elif "route" in info:  # adaptive_refine: every loop's rewrites; none on an easy question
        iterations = sum(len(r["iterations"]) - 1 for r in info.get("refinements", []))
    return Answer(correct(info["answer"], q.gold), info["usage"]["completion_tokens"],
                  info["usage"]["sub_requests"], latency, info.get("route"), iterations)


def refinement_step_reuse(base_url: str, tokenizer_folder: Path) -> dict[str, float]:
    """One `self_refine` request (1 critique, 1 rewrite) on a long question no earlier request
    saw: how many prompt tokens of its three sub-requests came from the prefix cache, against
    the question's full KV blocks that the critique and the rewrite could reuse."""
    import uuid

    from transformers import AutoTokenizer

    story = (f"Story {uuid.uuid4().hex}. " + "The cat sat on the mat. " * 90
             + "How many times did the cat sit?" + SUFFIX)
    messages = [{"role": "user", "content": story}]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    question = len(tokenizer(tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False))["input_ids"])
    hits0, queries0 = prefix_cache_counters(base_url)
    body = {"model": SERVED, "messages": messages, "temperature": 0.7, "max_tokens": 64,
            "seed": 1, "strategy": {"name": "self_refine", "stop": "fixed", "max_iterations": 1}}
    info = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=600).json()
    hits1, queries1 = prefix_cache_counters(base_url)
    return {"question": question, "hits": hits1 - hits0, "queries": queries1 - queries0,
            "sub_requests": info["strategy"]["usage"]["sub_requests"],
            "block_reusable": 2 * (question // BLOCK) * BLOCK}


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, engine_flags = split_engine_flags(argv)
    parser = task_parser(__doc__.split("\n\n")[0], questions=100, max_tokens=64,
                         png=REPO / "docs" / "refinement.png")
    return parser.parse_args(own), engine_flags


def main(argv: Sequence[str]) -> int:
    args, engine_flags = _parse(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    model = served_model(args.model)
    questions = load_questions(args.task, args.questions, args.seed, SUFFIX, TASK_OPTIONS)
    server = spawn_refinery(model, SERVED, engine_flags, "refinement")
    rows = []
    with running(server):
        for name, spec in CONFIGS.items():
            hits0, queries0 = prefix_cache_counters(server.base_url)
            answers = asyncio.run(run_questions(
                server.base_url, questions,
                functools.partial(ask, spec=spec, max_tokens=args.max_tokens),
                args.concurrency, name))
            hits1, queries1 = prefix_cache_counters(server.base_url)
            row: dict[str, Any] = {
                "config": name,
                "accuracy": statistics.mean(a.correct for a in answers),
                "tokens": statistics.mean(a.completion_tokens for a in answers),
                "sub_requests": statistics.mean(a.sub_requests for a in answers),
                "p50_ms": 1000 * statistics.median(a.latency_s for a in answers),
                "prefix_hit": (hits1 - hits0) / (queries1 - queries0)
                if queries1 > queries0 else 0.0,
                "iterations": statistics.mean(a.iterations for a in answers)
                if all(a.iterations is not None for a in answers) else None,
            }
            routed = [a for a in answers if a.route is not None]
            if routed:
                easy = [a.completion_tokens for a in routed if a.route == "easy"]
                hard = [a.completion_tokens for a in routed if a.route == "hard"]
                row["hard_share"] = len(hard) / len(routed)
                row["easy_tokens"] = statistics.mean(easy) if easy else None
                row["hard_tokens"] = statistics.mean(hard) if hard else None
                row["easy_accuracy"] = statistics.mean(
                    a.correct for a in routed if a.route == "easy") if easy else None
                row["hard_accuracy"] = statistics.mean(
                    a.correct for a in routed if a.route == "hard") if hard else None
            rows.append(row)
        reuse = refinement_step_reuse(server.base_url, model)
    title = f"Refinement vs sampling\nreasoning-gym {args.task}, {model.name}"
    scatter_plot(rows, "tokens", "accuracy", title,
                 "completion tokens per question (all sub-requests)", "accuracy %",
                 args.out_png, y_scale=100)

    def fmt(value: float | None, pattern: str) -> str:
        return "–" if value is None else pattern.format(value)

    table = "\n".join(
        f"| {r['config']} | {100 * r['accuracy']:.1f} | {r['tokens']:.0f} | "
        f"{r['sub_requests']:.1f} | {fmt(r['iterations'], '{:.2f}')} | {r['p50_ms']:.0f} | "
        f"{100 * r['prefix_hit']:.0f}% |" for r in rows)
    routing = "\n".join(
        f"- `{r['config']}`: {100 * r['hard_share']:.0f}% of questions routed hard; "
        f"tokens per question {fmt(r['easy_tokens'], '{:.0f}')} easy vs "
        f"{fmt(r['hard_tokens'], '{:.0f}')} hard; accuracy "
        f"{fmt(r['easy_accuracy'] and 100 * r['easy_accuracy'], '{:.1f}')}% easy vs "
        f"{fmt(r['hard_accuracy'] and 100 * r['hard_accuracy'], '{:.1f}')}% hard"
        for r in rows if "hard_share" in r)
    print(f"""
### Refinement vs sampling

- command: `python benchmarks/refinement.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs; model `{model.name}`
- date: {datetime.date.today().isoformat()}
- task: reasoning-gym `{args.task}` (seed {args.seed}), {args.questions} questions,
  "{SUFFIX.strip()}", temperature 0.7, max {args.max_tokens} tokens per draft,
  answer_format `number`; {args.concurrency} questions in flight; strategy defaults otherwise

{HEADER}
{table}

{routing}

A refinement step's prefix reuse (`self_refine`, one critique and one rewrite, on a
{reuse['question']}-token question no earlier request saw): {reuse['hits']:.0f} of the
{reuse['queries']:.0f} prompt tokens of its {reuse['sub_requests']} sub-requests came from the
prefix cache; the question's full {BLOCK}-token blocks, read by the critique and by the
rewrite, account for {reuse['block_reusable']} of them.

![refinement]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
