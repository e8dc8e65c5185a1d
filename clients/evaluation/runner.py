"""Send every question under every strategy through a live server and judge the replies.

Strategies are named on the command line as a comma list: `single` (a plain request), a preset
name the server lists (`GET /v1/strategies`: sc8, asc, esc, bon8, borda8, …), or a JSON strategy
object, optionally labelled: `sc16={"name":"self_consistency","max_samples":16}`. Presets are
expanded to their objects so that the task's `answer_format` can be added: the strategies then
vote on the same answers the task judges.

Strategies run one after another (so each has its own wall time and questions/s); the
questions of one strategy run `concurrency` at a time. Question i is sent with seed
`seed * 100_000 + 64 * i` under every strategy (a strategy's samples take the next seeds), so
a pass that an interrupted sitting left half done can be finished later asking only the
questions it had not answered: the answers are the ones one sitting would have got.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from clients.evaluation.summary import Outcome
from clients.evaluation.tasks import Question, Task

__all__ = ["EvalError", "PassSoFar", "ServerUnreachable", "StrategyChoice", "StrategyRun",
           "evaluate", "parse_strategies", "resolve_strategies", "server_presets"]

SINGLE = "single"
# Statuses that mean the run is misconfigured (bad strategy, key, model): stop, don't count.
_FATAL_STATUSES = (400, 401, 403, 404, 422)
# A 429's wait when its Retry-After is missing or unreadable, and the most any 429 is waited.
_DEFAULT_RETRY_AFTER_S = 1.0
_MAX_RETRY_AFTER_S = 60.0
# Waits before asking again while the server is not serving (connection refused, 503; the
# openai SDK retries these twice too); after the last one the server is taken for down.
_NOT_SERVING_RETRY_WAITS_S = (1.0, 2.0)


class EvalError(RuntimeError):
    """The evaluation cannot run as asked (bad strategy, unknown model, refused request)."""


class ServerUnreachable(EvalError):
    """The server stopped serving mid-run (crashed, stopped, draining, restarting)."""


@dataclass(frozen=True)
class StrategyChoice:
    """A strategy as sent: `spec` is None for a plain request, else the request's `strategy`."""

    label: str
    spec: Mapping[str, Any] | str | None


@dataclass(frozen=True)
class StrategyRun:
    """A strategy's finished pass; `wall_s` sums the sittings it took (`sittings` > 1 only
    when an interrupted pass was finished later)."""

    choice: StrategyChoice
    outcomes: tuple[Outcome, ...]
    wall_s: float
    sittings: int = 1


@dataclass(frozen=True)
class PassSoFar:
    """A strategy's pass in progress: the outcomes of the questions answered so far (by
    question index), the wall time spent on them and the sittings it has run in."""

    choice: StrategyChoice
    outcomes: Mapping[int, Outcome]
    wall_s: float
    sittings: int = 1


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside JSON brackets and strings."""
    items, depth, start, quoted, escaped = [], 0, 0, False, False
    for i, char in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            continue
        if char == '"':
            quoted = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_strategies(text: str) -> list[StrategyChoice]:
    """`single,sc8,lbl={"name":…}` → choices; a JSON object without a label is labelled by
    its `name`. ValueError on malformed JSON or duplicate labels."""
    choices = []
    for item in _split_top_level(text):
        label, sep, rest = item.partition("=")
        body = rest.strip() if sep and not label.strip().startswith("{") else item
        label = label.strip() if sep and not label.strip().startswith("{") else ""
        if body.startswith(("{", "[")):
            try:
                spec = json.loads(body)
            except ValueError as exc:
                raise ValueError(f"strategy {item!r} is not valid JSON: {exc}") from exc
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ValueError(f"strategy {item!r} needs a \"name\"")
            choices.append(StrategyChoice(label or spec["name"], spec))
        else:
            choices.append(StrategyChoice(label or body, None if body == SINGLE else body))
    labels = [c.label for c in choices]
    if not choices or len(set(labels)) != len(labels):
        raise ValueError(f"strategies must be a non-empty list of distinct labels: {labels}")
    return choices


def resolve_strategies(choices: Sequence[StrategyChoice], presets: Mapping[str, Mapping[str, Any]],
                       answer_format: str) -> list[StrategyChoice]:
    """Expand preset names into their objects and add `answer_format` where none is set."""
    resolved = []
    for choice in choices:
        spec = choice.spec
        if isinstance(spec, str):
            if spec not in presets:
                raise EvalError(f"unknown strategy {spec!r}: use single, a preset "
                                f"({', '.join(sorted(presets))}) or a JSON object")
            spec = presets[spec]
        if spec is not None:
            spec = {**spec, "answer_format": spec.get("answer_format", answer_format)}
        resolved.append(StrategyChoice(choice.label, spec))
    return resolved


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def _retry_after_s(response: httpx.Response) -> float:
    """The wait a 429 asks for: its Retry-After in seconds (the server sends whole seconds;
    an HTTP date or garbage falls back to one second), at most a minute."""
    try:
        wait = float(response.headers.get("Retry-After", _DEFAULT_RETRY_AFTER_S))
    except ValueError:
        wait = _DEFAULT_RETRY_AFTER_S
    return min(max(wait, 0.0), _MAX_RETRY_AFTER_S)


async def _post_while_serving(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    """POST a chat request, trying again after `_NOT_SERVING_RETRY_WAITS_S` while the server is
    not serving: no connection can be made, or it answers 503 (loading, draining for shutdown,
    engine dead; the openai SDK retries both). A server that stays so stops the run
    (ServerUnreachable) instead of scoring every question left as wrong in seconds: a crashed
    or stopped server must not finish an hours-long pass; the answers kept so far let
    `--resume` go on once it is back. A connection lost after the request went out is the
    question's error, as before."""
    waits = iter(_NOT_SERVING_RETRY_WAITS_S)
    while True:
        try:
            response = await client.post("/v1/chat/completions", json=body)
        except httpx.ConnectError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code != 503:
                return response
            failure = f"HTTP 503: {_error_message(response)}"
        wait = next(waits, None)
        if wait is None:
            raise ServerUnreachable(f"the server at {client.base_url} is not serving "
                                    f"({len(_NOT_SERVING_RETRY_WAITS_S) + 1} tries): {failure}")
        await asyncio.sleep(wait)


def _transport_failure(exc: httpx.HTTPError, read_timeout_s: float | None) -> str:
    """A question's error when no reply came: the exception's name and message. httpx's
    timeouts carry an empty message, so one says which limit ran out (`--timeout`), not a
    bare "ReadTimeout: "."""
    text = str(exc)
    if not text and isinstance(exc, httpx.TimeoutException):
        text = ("no reply within the client's timeout" if read_timeout_s is None
                else f"no reply within {read_timeout_s:g} s (the client's timeout)")
    return f"{type(exc).__name__}: {text}"


async def _ask(client: httpx.AsyncClient, task: Task, question: Question, body: dict[str, Any],
               *, budget_s: float) -> Outcome:
    """One question. While the server answers 429 (at capacity; nothing of the request ran)
    the request is sent again after its Retry-After, as the openai SDK does, for up to
    `budget_s` from the first attempt: admission control is how the server sets the pace, so
    an eval whose concurrency × sample budget exceeds the server's bound is slowed, not scored
    wrong. The latency runs from the first attempt (the waits included, as a user sees them);
    a 429 still standing when the next wait would end past `budget_s` is the question's
    error."""
    started = time.perf_counter()
    throttled = 0
    try:
        while True:
            response = await _post_while_serving(client, body)
            if response.status_code != 429:
                break
            wait = _retry_after_s(response)
            if time.perf_counter() + wait >= started + budget_s:
                break
            throttled += 1
            await asyncio.sleep(wait)
    except httpx.HTTPError as exc:
        return Outcome(question.id, False, None, 0, 0, 0, time.perf_counter() - started,
                       _transport_failure(exc, client.timeout.read), throttled=throttled)
    latency = time.perf_counter() - started
    if response.status_code in _FATAL_STATUSES:
        raise EvalError(f"the server refused the request ({response.status_code}): "
                        f"{_error_message(response)}")
    if response.status_code != 200:
        return Outcome(question.id, False, None, 0, 0, 0, latency,
                       f"HTTP {response.status_code}: {_error_message(response)}",
                       throttled=throttled)
    data = response.json()
    usage = data.get("usage") or {}
    strategy = data.get("strategy")
    if not isinstance(strategy, dict):
        strategy = None
    sub_requests = (strategy.get("usage") or {}).get("sub_requests", 1) if strategy else 1
    reply = data["choices"][0]["message"].get("content") or ""
    judgement = await asyncio.to_thread(task.judge, question, reply)
    return Outcome(question.id, judgement.correct, judgement.answer,
                   int(usage.get("completion_tokens", 0)), int(usage.get("prompt_tokens", 0)),
                   int(sub_requests), latency, reply=reply, detail=judgement.detail,
                   throttled=throttled, strategy_report=strategy)


async def evaluate(base_url: str, model: str, task: Task, questions: Sequence[Question],
                   strategies: Sequence[StrategyChoice], *, concurrency: int, max_tokens: int,
                   temperature: float, seed: int, api_key: str | None = None,
                   progress: bool = True, timeout_s: float = 1800.0,
                   extra_body: Mapping[str, Any] | None = None,
                   on_run: Callable[[StrategyRun], None] | None = None,
                   so_far: PassSoFar | None = None,
                   on_answer: Callable[[PassSoFar], None] | None = None,
                   transport: httpx.AsyncBaseTransport | None = None) -> list[StrategyRun]:
    """Every question under every strategy; a tqdm bar counts (strategy, question) pairs.
    `extra_body` is merged into every request (a proxy's own options, e.g. benchmarks that
    put a peer in front of the server); `on_run` gets each strategy's run as soon as its pass
    ends (the command writes its report then, so hours of measurement survive an interrupt);
    `on_answer` gets the pass so far after every answered question (the command keeps it, so
    an interrupt costs only the questions in flight); `so_far`, an earlier sitting's part of
    one of `strategies`' passes, is finished rather than run again; `transport` replaces the
    network (tests pass an in-process one). `timeout_s` bounds each HTTP call and, from its
    first attempt, the time a question may spend waiting out 429s."""
    from tqdm import tqdm

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    runs = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s,
                                 transport=transport) as client:
        with tqdm(total=len(questions) * len(strategies), unit="q", disable=not progress,
                  desc="refinery eval") as bar:
            for choice in strategies:
                bar.set_postfix_str(choice.label)
                template: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                                            "temperature": temperature, **(extra_body or {})}
                if choice.spec is not None:
                    template["strategy"] = dict(choice.spec)
                start = so_far if so_far is not None and so_far.choice == choice else (
                    PassSoFar(choice, {}, 0.0, 0))
                runs.append(await _pass(client, task, questions, template, start,
                                        concurrency=concurrency, seed=seed, budget_s=timeout_s,
                                        bar=bar, on_answer=on_answer))
                if on_run is not None:
                    on_run(runs[-1])
    return runs


async def _pass(client: httpx.AsyncClient, task: Task, questions: Sequence[Question],
                template: Mapping[str, Any], start: PassSoFar, *, concurrency: int, seed: int,
                budget_s: float, bar: Any, on_answer: Callable[[PassSoFar], None] | None,
                ) -> StrategyRun:
    """One strategy's pass: the questions `start` has not answered, `concurrency` at a time,
    each request `template` plus the question's messages and seed, each question given
    `budget_s` to get past the server's 429s. The wall time adds to `start`'s (this sitting is
    one more)."""
    answered = dict(start.outcomes)
    sittings = start.sittings + 1
    bar.update(len(answered))
    bar.refresh()  # an earlier sitting's answers show now, not at the first new one
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def answer(index: int, question: Question) -> None:
        body = {**template, "messages": list(question.messages),
                "seed": seed * 100_000 + 64 * index}
        async with gate:
            answered[index] = await _ask(client, task, question, body, budget_s=budget_s)
        bar.update()
        if on_answer is not None:
            on_answer(PassSoFar(start.choice, dict(answered),
                                start.wall_s + time.perf_counter() - started, sittings))

    asked = [asyncio.ensure_future(answer(i, q))
             for i, q in enumerate(questions) if i not in answered]
    try:
        await asyncio.gather(*asked)
    except BaseException:
        # A run that stops (refused request, unreachable server, interrupt) stops its
        # questions in flight too, rather than letting them ask on until the loop closes.
        for question in asked:
            question.cancel()
        await asyncio.gather(*asked, return_exceptions=True)
        raise
    return StrategyRun(start.choice, tuple(answered[i] for i in range(len(questions))),
                       start.wall_s + time.perf_counter() - started, sittings)


async def server_presets(base_url: str, api_key: str | None = None
                         ) -> tuple[str, dict[str, dict[str, Any]]]:
    """(the first served model, the server's presets) from /v1/models and /v1/strategies."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        models = (await client.get("/v1/models")).raise_for_status().json()["data"]
        listing = (await client.get("/v1/strategies")).raise_for_status().json()
    return models[0]["id"], dict(listing.get("presets", {}))
