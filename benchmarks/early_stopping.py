"""Early-stopping self-consistency (ESC, ASC) vs fixed SC at the same max samples, live through
the server, checked against a replay of the same stop rules on the same samples.

    python benchmarks/early_stopping.py [--questions 100 --task chain_sum --concurrency 8]
                                        [-- ENGINE FLAGS]

1. Pool: every question is answered once with fixed SC at the largest budget (40 samples,
   seeded, `return_candidates`), giving each question's samples 0…39 with their answers.
2. Replay: each stop rule (fixed / esc / asc at 16 and 40) is run offline on those answers,
   with the same code the server uses (strategies.stop_rules, strategies.answers).
3. Live: each configuration is sent to the server with the same seed: sample i has seed
   seed + i, so it is the same sample as in the pool, and the live stop point must equal the
   replayed one (up to CPU batch-composition noise, reported as the agreement rate).
Tasks come from `reasoning-gym` (procedural, seeded, with verifiers; no download at run time).
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
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from harness import Question, load_questions, save_figure, split_engine_flags
from strategies.answers import (
    AnswerGroups,
    answers_equivalent,
    extract_answer,
    parse_answer_format,
)
from strategies.base import Sample
from strategies.self_consistency import SelfConsistencyOptions
from strategies.voting import majority_vote
from tests.servers import REFINERY_READY, free_port, refinery_command, running, spawn

REPO = Path(__file__).resolve().parents[1]
SERVED = "smollm2"
SUFFIX = " Give only the final answer."
HEADER = ("| config | samples (live) | samples (replay) | saved vs fixed | accuracy live % "
          "| accuracy replay % | p50 latency ms | live = replay stop point |\n"
          "|---|---|---|---|---|---|---|---|")
CONFIGS = [("fixed", 16), ("esc", 16), ("asc", 16), ("fixed", 40), ("esc", 40), ("asc", 40)]


@dataclass(frozen=True)
class Outcome:
    samples: int
    answer: str | None
    latency_s: float = 0.0


TASK_OPTIONS = {"chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}


async def ask(client: httpx.AsyncClient, q: Question, stop: str, max_samples: int,
              max_tokens: int, candidates: bool = False) -> tuple[Outcome, list[Sample]]:
    body = {"model": SERVED, "messages": [{"role": "user", "content": q.prompt}],
            "temperature": 0.7, "max_tokens": max_tokens, "seed": q.seed,
            "strategy": {"name": "self_consistency", "stop": stop, "max_samples": max_samples,
                         "answer_format": "number", "return_candidates": candidates}}
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body)
    latency = time.perf_counter() - started
    response.raise_for_status()
    info = response.json()["strategy"]
    samples = [Sample(index=c["index"], text=c["text"], token_ids=tuple(range(c["tokens"])),
                      finish_reason=c["finish_reason"], certainty=c["certainty"])
               for c in info.get("candidates", [])]
    return Outcome(info["samples"], info["answer"], latency), samples


async def run_all(base_url: str, questions: list[Question], stop: str, max_samples: int,
                  max_tokens: int, concurrency: int, candidates: bool = False,
                  label: str = "") -> list[tuple[Outcome, list[Sample]]]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=900) as client:
        with tqdm(total=len(questions), desc=label, unit="q") as bar:
            async def one(q: Question) -> tuple[Outcome, list[Sample]]:
                async with gate:
                    result = await ask(client, q, stop, max_samples, max_tokens, candidates)
                bar.update()
                return result

            return list(await asyncio.gather(*(one(q) for q in questions)))


def replay(samples: list[Sample], stop: str, max_samples: int) -> Outcome:
    """The server's own stop rule, answer grouping and vote, applied to pre-drawn samples."""
    options = SelfConsistencyOptions(stop=stop, max_samples=max_samples, answer_format="number")
    spec = parse_answer_format(options.answer_format)
    rule = options.stop_rule()
    book = AnswerGroups()
    groups: list[int | None] = []
    for sample in samples[:max_samples]:
        groups.append(book.add(extract_answer(sample.text, spec)))
        if rule.settled(groups):
            break
    vote = majority_vote(samples[:len(groups)], groups)
    return Outcome(len(groups), book.representative(vote.group) if vote.group is not None else None)


def correct(answer: str | None, gold: str) -> bool:
    return answer is not None and answers_equivalent(answer, gold)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="chain_sum")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "early_stopping.png")
    return parser.parse_args(own), engine_flags


def _plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in rows:
        ax.scatter(row["samples_live"], row["acc_live"] * 100, s=40)
        ax.annotate(row["config"], (row["samples_live"], row["acc_live"] * 100),
                    textcoords="offset points", xytext=(5, 4))
    ax.set(title="Samples used vs accuracy (live, through the server)",
           xlabel="mean samples per question", ylabel="accuracy %")
    save_figure(fig, png)


def main(argv: Sequence[str]) -> int:
    args, engine_flags = _parse(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from server.embedded_model import ensure_embedded_model
    from server.settings import Settings

    model = ensure_embedded_model(Settings().cache_dir)
    questions = load_questions(args.task, args.questions, args.seed, SUFFIX, TASK_OPTIONS)
    budget = max(m for _, m in CONFIGS)
    logs = Path(tempfile.mkdtemp(prefix="refinery-early-stopping-"))
    port = free_port()
    server = spawn(refinery_command(port, str(model), "--served-model-name", SERVED,
                                    *engine_flags), logs / "refinery.log", port=port,
                   ready_paths=REFINERY_READY)
    rows = []
    with running(server):
        pool = asyncio.run(run_all(server.base_url, questions, "fixed", budget, args.max_tokens,
                                   args.concurrency, candidates=True, label=f"pool {budget}"))
        for stop, max_samples in CONFIGS:
            live = asyncio.run(run_all(server.base_url, questions, stop, max_samples,
                                       args.max_tokens, args.concurrency,
                                       label=f"{stop}@{max_samples}"))
            replayed = [replay(samples, stop, max_samples) for _, samples in pool]
            live_outcomes = [outcome for outcome, _ in live]
            rows.append({
                "config": f"{stop}@{max_samples}",
                "samples_replay": statistics.mean(o.samples for o in replayed),
                "samples_live": statistics.mean(o.samples for o in live_outcomes),
                "acc_replay": statistics.mean(correct(o.answer, q.gold)
                                              for o, q in zip(replayed, questions, strict=True)),
                "acc_live": statistics.mean(correct(o.answer, q.gold)
                                            for o, q in zip(live_outcomes, questions, strict=True)),
                "p50_ms": 1000 * statistics.median(o.latency_s for o in live_outcomes),
                "agree": statistics.mean(a.samples == b.samples
                                         for a, b in zip(replayed, live_outcomes, strict=True)),
            })
    first = parse_answer_format("number")
    single = statistics.mean(correct(extract_answer(samples[0].text, first), q.gold)
                             for (_, samples), q in zip(pool, questions, strict=True))
    _plot(rows, args.out_png)
    fixed = {r["config"].split("@")[1]: r["samples_live"] for r in rows if r["config"]
             .startswith("fixed")}
    table = "\n".join(
        f"| {r['config']} | {r['samples_live']:.1f} | {r['samples_replay']:.1f} | "
        f"{100 * (1 - r['samples_live'] / fixed[r['config'].split('@')[1]]):.0f}% | "
        f"{100 * r['acc_live']:.1f} | {100 * r['acc_replay']:.1f} | {r['p50_ms']:.0f} | "
        f"{100 * r['agree']:.0f}% |" for r in rows)
    print(f"""
### Early stopping: ESC / ASC vs fixed self-consistency

- command: `python benchmarks/early_stopping.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs; model `{model.name}`
- date: {datetime.date.today().isoformat()}
- task: reasoning-gym `{args.task}` (seed {args.seed}), {args.questions} questions,
  "{SUFFIX.strip()}", temperature 0.7, max {args.max_tokens} tokens, answer_format `number`;
  {args.concurrency} questions in flight; single-sample accuracy {100 * single:.1f}%

{HEADER}
{table}

![early stopping]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
