"""`refinery eval`: which strategy should I use, for my model, on my task?

Runs a task's questions under each strategy through a live server (`--base-url`, or one it
starts: `refinery serve [--model]`), then prints a table and writes results.json, results.md
and accuracy_vs_tokens.png into `--out` — after every strategy's pass, so an interrupted run
keeps the strategies it finished — and, in partial.json, the questions the strategy in progress
had answered. `--resume` keeps the strategies an earlier run into the same `--out` measured
under the same settings, finishes a pass it left half done and runs only the others: one table
can grow over several sittings (an SC@8 pass of 100 questions on a 1.5B model is half an hour
on 2 CPUs). `--rejudge` scores the replies a run in `--out` holds again with this version's
judge, asking no server (clients.evaluation.rejudge).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import httpx

from clients.evaluation.checkpoint import PARTIAL_FILE, drop_pass, read_pass, write_pass
from clients.evaluation.local_server import local_server
from clients.evaluation.rejudge import Rejudged, rejudge_outcomes
from clients.evaluation.report import read_runs, summarise_runs, text_table, write_report
from clients.evaluation.runner import (
    EvalError,
    PassSoFar,
    ServerUnreachable,
    StrategyChoice,
    StrategyRun,
    evaluate,
    parse_strategies,
    resolve_strategies,
    server_presets,
)
from clients.evaluation.summary import StrategySummary
from clients.evaluation.tasks import Question, Task, parse_task

__all__ = ["build_eval_parser", "run_eval"]


def build_eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refinery eval",
        description="Run a task's questions under each strategy through a Refinery server and "
        "report accuracy (95%% bootstrap interval), generated tokens, sub-requests, latency "
        "and questions/s per strategy.",
    )
    parser.add_argument("--task", required=True,
                        help="reasoning_gym:<task>[?param=value&…] | humaneval | jsonl:<file>")
    parser.add_argument("--strategies", default="single,sc8",
                        help="comma list: single (a plain request), presets (sc8, asc, esc, bon8, "
                        "borda8, …: GET /v1/strategies) or JSON objects, optionally "
                        "label={json} (default: %(default)s)")
    parser.add_argument("--base-url", help="a running server (default: start `refinery serve`)")
    parser.add_argument("--model", help="the model to ask for (default: the server's first); "
                        "without --base-url, the MODEL the started server serves (e.g. "
                        "qwen2.5-coder-1.5b; default: the embedded smollm2)")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="FLAG",
                        help="a flag for the started server, repeatable: "
                        "--serve-arg=--max-model-len=4096")
    parser.add_argument("--limit", type=int, default=50, help="questions (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="questions, sampling and the "
                        "bootstrap (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="questions in flight at once (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--answer-format", default="auto",
                        help="jsonl tasks: how the final answer is extracted and voted on "
                        "(auto, boxed, answer_is, number, choice, code, text, regex:<pattern>)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="bearer token (default: $OPENAI_API_KEY)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per request")
    parser.add_argument("--out", type=Path, help="output folder (default: "
                        "eval-results/<task>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the strategies --out/results.json already holds (same task, "
                        "model, questions, seed, concurrency, max tokens, temperature; same "
                        "label and spec), finish the pass --out/partial.json left half done "
                        "(asking again its questions that got no reply) and run only the "
                        "others")
    parser.add_argument("--rejudge", action="store_true",
                        help="score the replies --out/results.json and --out/partial.json hold "
                        "again with this version's judge and rewrite the report; starts and "
                        "asks no server (the task must be the run's)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run_eval(argv: Sequence[str]) -> int:
    """The `refinery eval` command; returns the exit status (2: bad arguments or a refused
    run)."""
    args = build_eval_parser().parse_args(list(argv))
    try:
        if args.limit < 1 or args.concurrency < 1 or args.max_tokens < 1:
            raise ValueError("--limit, --concurrency and --max-tokens must be at least 1")
        if args.resume and args.out is None:
            raise ValueError("--resume needs --out: the folder of the run to go on with")
        if args.rejudge:
            return _rejudge(args.out, parse_task(args.task, args.answer_format), argv,
                            plot=not args.no_plot, resume=args.resume)
        task = parse_task(args.task, args.answer_format)
        choices = parse_strategies(args.strategies)
        questions = task.questions(args.limit, args.seed)
        if not questions:
            raise ValueError(f"task {task.name} has no questions")
        slug = re.sub(r"[^\w.-]+", "_", task.name)
        out = args.out or Path("eval-results") / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
        facts = {"task": task.name, "questions": len(questions), "seed": args.seed,
                 "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                 "temperature": args.temperature}
        earlier, earlier_runs = ({}, [])
        if args.resume and (out / "results.json").exists():
            earlier, earlier_runs = read_runs(out / "results.json")
            _same_settings(earlier, facts)  # before a server is started for nothing
        partial = read_pass(out) if args.resume else None
        if partial is not None:
            _same_settings(partial[0], facts)
        server = (contextlib.nullcontext(args.base_url) if args.base_url else
                  local_server(args.model, args.serve_arg, out / "server.log"))
        with server as base_url:
            served, presets = asyncio.run(server_presets(base_url, args.api_key))
            model = args.model if args.base_url and args.model else served
            if earlier:
                _same_settings(earlier, {"model": model})
            strategies = resolve_strategies(choices, presets, task.answer_format)
            done = _kept_runs(strategies, earlier_runs, questions)
            so_far = None
            if partial is not None:
                _same_settings(partial[0], {"model": model})
                so_far = _unfinished_pass(partial[1], strategies, done, questions, out)
            settings = {**facts, "model": model, "base_url": args.base_url or "started",
                        "date": time.strftime("%Y-%m-%d"),
                        "command": shlex.join(["refinery", "eval", *argv])}
            if done:
                before = f"{earlier.get('date', '?')}: {earlier.get('command', '?')}"
                settings["earlier_commands"] = [*earlier.get("earlier_commands", []), before]
                if "rejudged" in earlier:
                    settings["rejudged"] = earlier["rejudged"]
            order = [choice.label for choice in strategies]
            written: list[tuple[list[StrategySummary], list[Path]]] = []

            def record(run: StrategyRun) -> None:
                done.append(run)
                written[:] = [_report(out, settings, _in_order(done, order), args.seed,
                                      not args.no_plot)]
                drop_pass(out)  # the pass is in results.json now
                _warn_of_deadlines(run, args.concurrency)

            def keep(pass_so_far: PassSoFar) -> None:
                write_pass(out, {**facts, "model": model}, pass_so_far)

            asyncio.run(evaluate(
                base_url, model, task, questions,
                [choice for choice in strategies if choice.label not in _labels(done)],
                concurrency=args.concurrency, max_tokens=args.max_tokens,
                temperature=args.temperature, seed=args.seed, api_key=args.api_key,
                progress=not args.quiet, timeout_s=args.timeout, on_run=record,
                so_far=so_far, on_answer=keep))
    except (EvalError, ValueError, RuntimeError, OSError, httpx.HTTPError) as exc:
        print(f"refinery eval: {exc}", file=sys.stderr)
        if isinstance(exc, ServerUnreachable) and (out / PARTIAL_FILE).exists():
            print(f"refinery eval: the questions answered so far are kept in "
                  f"{out / PARTIAL_FILE}; the same command with --resume goes on from "
                  "them", file=sys.stderr)
        return 2
    # The last strategy's pass wrote the final files; a --resume with nothing left to run
    # writes them here (the settings gained an earlier command).
    summaries, paths = written[-1] if written else _report(
        out, settings, _in_order(done, order), args.seed, not args.no_plot)
    print(text_table(summaries))
    for path in paths:
        print(f"wrote {path}")
    return 0


def _rejudge(out: Path | None, task: Task, argv: Sequence[str], *, plot: bool,
             resume: bool) -> int:
    """`--rejudge`: every stored reply in `out` judged again; the report and partial.json
    rewritten, the changed verdicts counted per strategy on stderr."""
    if out is None:
        raise ValueError("--rejudge needs --out: the folder of the run to score again")
    if resume:
        raise ValueError("--rejudge asks no server; run it first, then --resume")
    results, partial = out / "results.json", read_pass(out)
    if not results.exists() and partial is None:
        raise ValueError(f"--rejudge: {out} holds no results.json or partial.json")
    settings, runs = read_runs(results) if results.exists() else (dict(partial[0]), [])
    _same_settings(settings, {"task": task.name})
    questions = {question.id: question
                 for question in task.questions(int(settings["questions"]), int(settings["seed"]))}
    tally = Rejudged({}, {})
    runs = [replace(run, outcomes=tuple(rejudge_outcomes(task, questions, run.choice.label,
                                                         run.outcomes, tally)))
            for run in runs]
    labels = [run.choice.label for run in runs]
    if partial is not None:
        _same_settings(partial[0], {"task": task.name})
        so_far = partial[1]
        judged = rejudge_outcomes(task, questions, so_far.choice.label,
                                  list(so_far.outcomes.values()), tally)
        write_pass(out, partial[0],
                   replace(so_far, outcomes=dict(zip(so_far.outcomes, judged, strict=True))))
        labels.append(so_far.choice.label)
    if runs:
        when = f"{time.strftime('%Y-%m-%d')}: {shlex.join(['refinery', 'eval', *argv])}"
        settings["rejudged"] = [*settings.get("rejudged", []), when]
        summaries, paths = _report(out, settings, runs, int(settings["seed"]), plot)
        print(text_table(summaries))
        for path in paths:
            print(f"wrote {path}")
    for label in labels:
        print(f"refinery eval --rejudge: {tally.line(label)}", file=sys.stderr)
    return 0


def _same_settings(earlier: dict[str, object], facts: dict[str, object]) -> None:
    differ = {key: (earlier.get(key), value) for key, value in facts.items()
              if earlier.get(key) != value}
    if differ:
        raise ValueError("--resume: the earlier run in --out differs in "
                         + ", ".join(f"{key} ({was!r} there, {now!r} now)"
                                     for key, (was, now) in differ.items())
                         + "; use another --out")


def _labels(runs: Sequence[StrategyRun]) -> set[str]:
    return {run.choice.label for run in runs}


def _kept_runs(strategies: Sequence[StrategyChoice], earlier: Sequence[StrategyRun],
               questions: Sequence[Question]) -> list[StrategyRun]:
    """The earlier runs to keep: all of them, each checked against this run's questions, and
    against the strategy of the same label if this run names one (a label measured with
    another spec would make one table mix two strategies under one name)."""
    specs = {choice.label: choice.spec for choice in strategies}
    ids = [question.id for question in questions]
    for run in earlier:
        if [outcome.question_id for outcome in run.outcomes] != ids:
            raise ValueError(f"--resume: {run.choice.label!r} was measured on other questions")
        if run.choice.label in specs and specs[run.choice.label] != run.choice.spec:
            raise ValueError(f"--resume: {run.choice.label!r} was measured as "
                             f"{run.choice.spec!r}, now asked as {specs[run.choice.label]!r}; "
                             "give it another label (label={...}) or use another --out")
    return list(earlier)


def _warn_of_deadlines(run: StrategyRun, concurrency: int) -> None:
    """Say so when questions ran past the server's request deadline: they count as wrong, and
    the cause is usually the evaluation's own load (`concurrency` questions × the strategy's
    samples sharing the engine), not the strategy."""
    late = sum((outcome.error or "").startswith("HTTP 504") for outcome in run.outcomes)
    if late:
        print(f"refinery eval: {late} of {len(run.outcomes)} questions under {run.choice.label!r} "
              "ran past the server's request deadline (HTTP 504) and count as wrong; lower "
              f"--concurrency (now {concurrency}) or give the server a longer "
              "REFINERY_REQUEST_TIMEOUT", file=sys.stderr)


def _unfinished_pass(so_far: PassSoFar, strategies: Sequence[StrategyChoice],
                     done: Sequence[StrategyRun], questions: Sequence[Question],
                     out: Path) -> PassSoFar | None:
    """The half-done pass to finish: the one partial.json holds if this run names its strategy
    (same label, same spec) and has not measured it yet. A pass of a strategy this run does not
    name is dropped, saying so (its file would be overwritten by the first answer anyway)."""
    label = so_far.choice.label
    specs = {choice.label: choice.spec for choice in strategies}
    if any(index >= len(questions) or questions[index].id != outcome.question_id
           for index, outcome in so_far.outcomes.items()):
        raise ValueError(f"--resume: the unfinished pass of {label!r} in {out} was measured on "
                         "other questions; delete its partial.json or use another --out")
    if label in _labels(done):
        drop_pass(out)
        return None
    if label not in specs:
        print(f"refinery eval: dropping the unfinished pass of {label!r} "
              f"({len(so_far.outcomes)} questions answered): --strategies does not name it",
              file=sys.stderr)
        drop_pass(out)
        return None
    if specs[label] != so_far.choice.spec:
        raise ValueError(f"--resume: the unfinished pass of {label!r} was measured as "
                         f"{so_far.choice.spec!r}, now asked as {specs[label]!r}; give it "
                         "another label (label={...}) or delete its partial.json")
    failed = {index: outcome for index, outcome in so_far.outcomes.items()
              if outcome.error is not None}
    if failed:
        # No reply is no measurement: a server that crashed, restarted or ran past its
        # deadline mid-sitting would otherwise fix those questions as wrong for good.
        first = failed[min(failed)].error
        print(f"refinery eval: asking again the {len(failed)} question(s) of {label!r} the "
              f"earlier sitting got no reply for (e.g. {first})", file=sys.stderr)
        so_far = replace(so_far, outcomes={index: outcome
                                           for index, outcome in so_far.outcomes.items()
                                           if index not in failed})
    return so_far


def _in_order(runs: Sequence[StrategyRun], order: Sequence[str]) -> list[StrategyRun]:
    """The strategies this run names, in its order, then earlier ones it does not name."""
    rank = {label: i for i, label in enumerate(order)}
    return sorted(runs, key=lambda run: rank.get(run.choice.label, len(rank)))


def _report(out: Path, settings: dict[str, object], runs: Sequence[StrategyRun], seed: int,
            plot: bool) -> tuple[list[StrategySummary], list[Path]]:
    summaries = summarise_runs(runs, seed)
    return summaries, write_report(out, settings, runs, summaries, plot=plot)
