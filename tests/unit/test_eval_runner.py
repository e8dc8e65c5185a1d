"""`refinery eval`'s runner: strategy lists parsed (names, presets, labelled JSON), presets
expanded with the task's answer format, and every question sent under every strategy to a
server stand-in (httpx.MockTransport) whose usage and strategy objects are read back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from clients.evaluation import runner as runner_module
from clients.evaluation.runner import (
    EvalError,
    PassSoFar,
    ServerUnreachable,
    StrategyChoice,
    evaluate,
    parse_strategies,
    resolve_strategies,
)
from clients.evaluation.summary import Outcome
from clients.evaluation.tasks import parse_task

PRESETS = {"sc8": {"name": "self_consistency", "stop": "fixed", "max_samples": 8},
           "bon8": {"name": "best_of_n", "n": 8, "selection": "self_certainty"}}


def test_names_presets_and_labelled_json_objects_are_parsed() -> None:
    choices = parse_strategies('single, sc8,sc16={"name":"self_consistency","max_samples":16},'
                               '{"name":"best_of_n","n":4,"answer_format":"regex:(a,b)"}')
    assert choices == [
        StrategyChoice("single", None), StrategyChoice("sc8", "sc8"),
        StrategyChoice("sc16", {"name": "self_consistency", "max_samples": 16}),
        StrategyChoice("best_of_n", {"name": "best_of_n", "n": 4,
                                     "answer_format": "regex:(a,b)"}),
    ]


@pytest.mark.parametrize("text", ["", "sc8,sc8", '{"n": 8}', '{"name": "x"', "a=[1]"])
def test_bad_strategy_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_strategies(text)


def test_presets_are_expanded_with_the_tasks_answer_format() -> None:
    choices = parse_strategies('single,sc8,{"name":"best_of_n","n":2,"answer_format":"number"}')
    resolved = resolve_strategies(choices, PRESETS, "answer_is")
    assert resolved[0].spec is None
    assert resolved[1].spec == {**PRESETS["sc8"], "answer_format": "answer_is"}
    assert resolved[2].spec["answer_format"] == "number"  # the user's choice stays


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(EvalError, match="bon8, sc8"):
        resolve_strategies(parse_strategies("sc99"), PRESETS, "auto")


class FakeServer:
    """Answers every chat request with the gold answer for strategies and a wrong one for
    plain requests, recording each body."""

    def __init__(self, status: int = 200, *, refusals: int = 0,
                 retry_after: str = "0", drop_after_refusals: bool = False) -> None:
        self.bodies: list[dict] = []
        self.status = status
        self.refusals = refusals  # 429s (at capacity) before each question is let in
        self.retry_after = retry_after
        self.refused: dict[int, int] = {}
        self.drop_after_refusals = drop_after_refusals  # the connection fails once let in

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.refused.get(body["seed"], 0) < self.refusals:
            self.refused[body["seed"]] = self.refused.get(body["seed"], 0) + 1
            return httpx.Response(429, headers={"Retry-After": self.retry_after},
                                  json={"error": {"message": "at capacity"}})
        if self.drop_after_refusals:
            raise httpx.ReadError("connection reset", request=request)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "nope"}})
        gold = body["messages"][0]["content"].split("gold=")[1].split()[0]
        strategy = body.get("strategy")
        answer = gold if strategy else "-1"
        data = {"choices": [{"message": {"role": "assistant", "content": f"Answer: {answer}"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 80 if strategy else 10}}
        if strategy:
            data["strategy"] = {"name": strategy["name"], "usage": {"sub_requests": 8}}
        return httpx.Response(200, json=data)


def jsonl_task(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q gold={i} ?", "answer": i})
                              for i in range(4)))
    return parse_task(str(path), answer_format="answer_is")


def run(task, server: FakeServer, strategies: list[StrategyChoice], extra_body=None, **more):
    questions = task.questions(None, seed=0)
    return asyncio.run(evaluate("http://eval", "m", task, questions, strategies, concurrency=2,
                                max_tokens=64, temperature=0.7, seed=3, progress=False,
                                extra_body=extra_body, transport=httpx.MockTransport(server),
                                **more))


def test_every_question_runs_under_every_strategy_with_seeds_and_usage(tmp_path: Path) -> None:
    server = FakeServer()
    strategies = resolve_strategies(parse_strategies("single,sc8"), PRESETS, "answer_is")
    single, sc8 = run(jsonl_task(tmp_path), server, strategies)
    assert [o.correct for o in single.outcomes] == [False] * 4
    assert [o.correct for o in sc8.outcomes] == [True] * 4
    assert [o.sub_requests for o in single.outcomes] == [1] * 4
    assert [o.sub_requests for o in sc8.outcomes] == [8] * 4
    assert sc8.outcomes[0].completion_tokens == 80 and sc8.outcomes[0].prompt_tokens == 10
    assert sc8.outcomes[1].reply == "Answer: 1" and single.outcomes[1].reply == "Answer: -1"
    assert sc8.outcomes[2].strategy_report == {"name": "self_consistency",
                                               "usage": {"sub_requests": 8}}
    assert [o.strategy_report for o in single.outcomes] == [None] * 4
    assert len(server.bodies) == 8
    plain = [b for b in server.bodies if "strategy" not in b]
    assert sorted(b["seed"] for b in plain) == [300_000, 300_064, 300_128, 300_192]
    assert all(b["max_tokens"] == 64 and b["model"] == "m" for b in server.bodies)
    assert all(b["strategy"]["answer_format"] == "answer_is"
               for b in server.bodies if "strategy" in b)


def test_extra_body_fields_reach_every_request(tmp_path: Path) -> None:
    server = FakeServer()
    run(jsonl_task(tmp_path), server, [StrategyChoice("single", None)],
        extra_body={"k": 8, "max_tokens": 32})
    assert len(server.bodies) == 4
    assert all(b["k"] == 8 and b["max_tokens"] == 32 for b in server.bodies)


def test_a_refused_request_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="400.*nope"):
        run(jsonl_task(tmp_path), FakeServer(400), [StrategyChoice("single", None)])


def test_a_server_error_is_counted_against_the_question(tmp_path: Path) -> None:
    (run_,) = run(jsonl_task(tmp_path), FakeServer(500), [StrategyChoice("single", None)])
    assert all(not o.correct and o.error == "HTTP 500: nope" for o in run_.outcomes)


def test_a_server_at_capacity_is_waited_out_as_its_retry_after_asks(tmp_path: Path) -> None:
    """Two 429s per question, then the answer: every question is answered and counts its
    refusals; the latency includes the waits (Retry-After 0.05 s here)."""
    server = FakeServer(refusals=2, retry_after="0.05")
    (run_,) = run(jsonl_task(tmp_path), server, [StrategyChoice("single", None)])
    assert [o.throttled for o in run_.outcomes] == [2] * 4
    assert all(o.error is None and o.reply == "Answer: -1" for o in run_.outcomes)
    assert all(o.latency_s >= 0.1 for o in run_.outcomes)
    assert len(server.bodies) == 4 * 3


def test_a_transport_error_after_429s_keeps_their_count(tmp_path: Path) -> None:
    server = FakeServer(refusals=2, drop_after_refusals=True)
    (run_,) = run(jsonl_task(tmp_path), server, [StrategyChoice("single", None)])
    assert all(o.error == "ReadError: connection reset" and o.throttled == 2
               for o in run_.outcomes)


def test_a_reply_that_never_comes_says_which_timeout_ran_out(tmp_path: Path) -> None:
    """httpx's ReadTimeout has no message; the question's error (shown again when --resume
    asks it anew) names the client's timeout instead of ending in a bare colon."""
    def silent(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("", request=request)

    (run_,) = run(jsonl_task(tmp_path), silent, [StrategyChoice("single", None)], timeout_s=90)
    assert [o.error for o in run_.outcomes] == [
        "ReadTimeout: no reply within 90 s (the client's timeout)"] * 4


class Unreachable:
    """Not serving for `refusals` requests in all — connection refused, or 503 while the
    server drains for shutdown — then answers as FakeServer does."""

    def __init__(self, refusals: int, draining: bool = False) -> None:
        self.refusals = refusals
        self.draining = draining
        self.tries = 0
        self.answer = FakeServer()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        if self.tries <= self.refusals:
            if self.draining:
                return httpx.Response(503, json={"error": {"message": "shutting down"}})
            raise httpx.ConnectError("connection refused", request=request)
        return self.answer(request)


@pytest.mark.parametrize(("draining", "failure"), [(False, "ConnectError: connection refused"),
                                                   (True, "HTTP 503: shutting down")])
def test_a_server_that_stops_serving_stops_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, draining: bool, failure: str) -> None:
    """Nothing is scored wrong: the first question tries three times, then the run stops, and
    the pass so far (nothing answered) is what a --resume would go on from."""
    monkeypatch.setattr(runner_module, "_NOT_SERVING_RETRY_WAITS_S", (0.0, 0.0))
    seen: list[PassSoFar] = []
    server = Unreachable(refusals=10**6, draining=draining)
    with pytest.raises(ServerUnreachable, match=r"http://eval.* is not serving \(3 tries\): "
                       + failure):
        run(jsonl_task(tmp_path), server, [StrategyChoice("single", None)],
            on_answer=seen.append)
    assert seen == [] and 3 <= server.tries < 4 * 3  # not every question tried in full


@pytest.mark.parametrize("draining", [False, True])
def test_a_server_not_serving_for_a_moment_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, draining: bool) -> None:
    monkeypatch.setattr(runner_module, "_NOT_SERVING_RETRY_WAITS_S", (0.0, 0.0))
    server = Unreachable(refusals=2, draining=draining)
    (run_,) = run(jsonl_task(tmp_path), server, [StrategyChoice("single", None)])
    assert all(o.error is None and o.reply == "Answer: -1" for o in run_.outcomes)
    assert server.tries == 4 + 2


@pytest.mark.parametrize(("retry_after", "asked"), [("0.02", None), ("soon", 1)])
def test_a_429_that_outlasts_the_questions_time_is_its_error(
        tmp_path: Path, retry_after: str, asked: int | None) -> None:
    """A server that stays full: each question is asked until its time (timeout_s) would
    pass before the next try, then scored with the 429. An unreadable Retry-After means one
    second, longer than the 0.2 s given, so that question is asked once."""
    server = FakeServer(refusals=10**6, retry_after=retry_after)
    (run_,) = run(jsonl_task(tmp_path), server, [StrategyChoice("single", None)],
                  timeout_s=0.2)
    assert all(o.error == "HTTP 429: at capacity" and not o.correct for o in run_.outcomes)
    if asked is None:
        # waits of 0.02 s: at least one, and never one that would end past the 0.2 s
        assert all(1 <= o.throttled <= 10 for o in run_.outcomes)
    else:
        assert [o.throttled for o in run_.outcomes] == [0] * 4
        assert len(server.bodies) == 4 * asked


def test_every_answer_hands_on_the_pass_so_far(tmp_path: Path) -> None:
    seen: list[PassSoFar] = []
    (run_,) = run(jsonl_task(tmp_path), FakeServer(), [StrategyChoice("single", None)],
                  on_answer=seen.append)
    assert [len(p.outcomes) for p in seen] == [1, 2, 3, 4]
    assert all(p.choice == StrategyChoice("single", None) and p.sittings == 1 for p in seen)
    assert [p.wall_s for p in seen] == sorted(p.wall_s for p in seen)
    assert dict(seen[-1].outcomes) == dict(enumerate(run_.outcomes))
    assert run_.sittings == 1 and run_.wall_s >= seen[-1].wall_s


def test_a_half_done_pass_asks_only_the_questions_it_lacks(tmp_path: Path) -> None:
    """Questions 0 and 2 were answered in an earlier sitting of 50 s: only 1 and 3 are asked,
    with the seeds one sitting would have used, and the kept outcomes stay as they were."""
    server = FakeServer()
    single = StrategyChoice("single", None)
    task = jsonl_task(tmp_path)
    ids = [q.id for q in task.questions(None, seed=0)]
    kept = {i: Outcome(ids[i], True, str(i), 7, 7, 1, 9.5) for i in (0, 2)}
    sc8, single_run = run(task, server, [*resolve_strategies(parse_strategies("sc8"), PRESETS,
                                                               "answer_is"), single],
                          so_far=PassSoFar(single, kept, 50.0, 1))
    assert [b["seed"] for b in server.bodies if "strategy" not in b] == [300_064, 300_192]
    assert len(server.bodies) == 4 + 2  # sc8 in full, single's two missing questions
    assert single_run.outcomes[0] == kept[0] and single_run.outcomes[2] == kept[2]
    assert [o.question_id for o in single_run.outcomes] == ids
    assert single_run.sittings == 2 and single_run.wall_s >= 50.0
    assert sc8.sittings == 1 and sc8.wall_s < 50.0  # the pass so far was not sc8's
