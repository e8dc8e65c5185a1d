"""Tool choice: how often the returned call is the right one, for a single sample,
self-consistency@8 voting over calls by `name_args`, and best-of-8 by self-certainty (valid
calls first), live through the server on a hand-written task set.

    python benchmarks/tool_choice.py [--cases 54 --concurrency 4 --tool-choice required]
                                     [--model qwen2.5-coder-1.5b] [-- ENGINE FLAGS]

The cases (benchmarks/tool_choice_cases.json) offer eight tools and have one known right call
each; a call is right when its name is and every expected argument matches (strings
case-insensitively, numbers by value; free-text arguments such as an email body are listed in
`ignore_args`, left out of the check and of the vote). The server is started with
`--enable-auto-tool-choice --tool-call-parser hermes` unless the engine flags name a parser.
With `--strict` every tool is `strict` (vLLM then pins the arguments to the tool's schema: every
call is well formed, and what is measured is only the choice of tool and values).
Reported per configuration: accuracy, the share of answers that are a well-formed call,
completion tokens per question (every sample), and p50 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from harness import (
    Question,
    run_questions,
    scatter_plot,
    served_model,
    spawn_refinery,
    split_engine_flags,
)
from tests.servers import running

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "benchmarks" / "tool_choice_cases.json"
SERVED = "model"
TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
HEADER = ("| config | right call % | well-formed call % | completion tokens / question "
          "| p50 latency ms |\n|---|---|---|---|---|")
CONFIGS: dict[str, dict[str, Any] | None] = {
    "single": None,
    "sc@8 name_args": {"name": "self_consistency", "stop": "fixed", "max_samples": 8,
                       "tool_vote": "name_args"},
    "best-of-8 self_certainty": {"name": "best_of_n", "n": 8, "selection": "self_certainty"},
}


@dataclass(frozen=True)
class Outcome:
    right: bool
    well_formed: bool
    completion_tokens: int
    latency_s: float


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, str):
        return isinstance(value, str) and value.strip().casefold() == expected.casefold()
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        try:
            return Decimal(str(value)) == Decimal(str(expected))
        except ArithmeticError:
            return False
    return bool(value == expected)


def judge(message: dict[str, Any], case: dict[str, Any]) -> tuple[bool, bool]:
    """(right call, well-formed call) for the first call of a response message."""
    calls = message.get("tool_calls") or []
    if not calls:
        return False, False
    function = calls[0]["function"]
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return False, False
    if not isinstance(arguments, dict):
        return False, False
    expected = case["call"]
    right = function["name"] == expected["name"] and all(
        key in arguments and _same(arguments[key], value)
        for key, value in expected["arguments"].items())
    return right, True


async def ask(client: httpx.AsyncClient, question: Question, *, cases: list[dict[str, Any]],
              document: dict[str, Any], strategy: dict[str, Any] | None,
              args: argparse.Namespace) -> Outcome:
    case = cases[question.index]
    body: dict[str, Any] = {
        "model": SERVED, "max_tokens": args.max_tokens, "temperature": args.temperature,
        "seed": question.seed, "tool_choice": args.tool_choice,
        "tools": [{**tool, "function": {**tool["function"], "strict": args.strict}}
                  for tool in document["tools"]],
        "parallel_tool_calls": False,
        "messages": [{"role": "system", "content": document["system"]},
                     {"role": "user", "content": case["query"]}],
    }
    if strategy is not None:
        body["strategy"] = {**strategy, "ignore_args": case["ignore_args"]}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body)
    latency = time.perf_counter() - started
    response.raise_for_status()
    data = response.json()
    right, well_formed = judge(data["choices"][0]["message"], case)
    return Outcome(right, well_formed, data["usage"]["completion_tokens"], latency)


def row(config: str, outcomes: list[Outcome]) -> dict[str, Any]:
    count = len(outcomes)
    return {
        "config": config,
        "accuracy": sum(o.right for o in outcomes) / count,
        "well_formed": sum(o.well_formed for o in outcomes) / count,
        "tokens": sum(o.completion_tokens for o in outcomes) / count,
        "p50_ms": statistics.median(o.latency_s for o in outcomes) * 1000,
    }


async def run_all(base_url: str, cases: list[dict[str, Any]], document: dict[str, Any],
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    questions = [Question(i, case["query"], json.dumps(case["call"]), args.seed * 1000 + i * 64)
                 for i, case in enumerate(cases)]
    rows = []
    for config, strategy in CONFIGS.items():
        async def one(client: httpx.AsyncClient, question: Question,
                      strategy: dict[str, Any] | None = strategy) -> Outcome:
            return await ask(client, question, cases=cases, document=document,
                             strategy=strategy, args=args)

        outcomes = await run_questions(base_url, questions, one, args.concurrency, config)
        rows.append(row(config, outcomes))
    return rows


def main(argv: list[str]) -> None:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=None, help="the first N cases (all: 54)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--tool-choice", choices=("required", "auto"), default="required")
    parser.add_argument("--strict", action="store_true",
                        help="mark every tool strict (arguments follow its schema)")
    parser.add_argument("--model", default=None,
                        help="a built-in model name or a model folder (default: the embedded "
                        "SmolLM2)")
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "tool_choice.png")
    args = parser.parse_args(own)
    document = json.loads(CASES.read_text())
    cases = document["cases"][:args.cases]
    if "--tool-call-parser" not in engine_flags:
        engine_flags = [*TOOL_FLAGS, *engine_flags]
    model = served_model(None) if args.model is None else Path(args.model)

    with running(spawn_refinery(model, SERVED, engine_flags, "tool-choice")) as server:
        rows = asyncio.run(run_all(server.base_url, cases, document, args))

    print(f"\n{len(cases)} cases, tool_choice {args.tool_choice}, strict {args.strict}, "
          f"T={args.temperature}, "
          f"max_tokens {args.max_tokens}, model {args.model or 'embedded SmolLM2-135M'}")
    print(f"command: python benchmarks/tool_choice.py {shlex.join(argv)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; date: "
          f"{datetime.date.today().isoformat()}\n")
    print(HEADER)
    for r in rows:
        print(f"| {r['config']} | {r['accuracy'] * 100:.1f} | {r['well_formed'] * 100:.1f} "
              f"| {r['tokens']:.0f} | {r['p50_ms']:.0f} |")
    scatter_plot(rows, "tokens", "accuracy", f"Tool choice, {len(cases)} cases",
                 "completion tokens / question", "right call %", args.out_png, y_scale=100)
    print(f"\nplot: {args.out_png}")


if __name__ == "__main__":
    main(sys.argv[1:])
