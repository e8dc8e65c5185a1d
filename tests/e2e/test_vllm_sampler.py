"""The vLLM sampler on a real engine in this process: what `Sampler.submit` promises strategies
(continued conversations, per-call parameters, JSON schemas, watchers, aborts) holds on vLLM.

No strategy uses every argument yet, so they are driven here directly, on the embedded model
the session server already converted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

from server.api.error_responses import classify
from server.cli import resolve_serve_args
from server.engine.prompt_rendering import prompt_renderer
from server.engine.vllm import OpenedSampler, VllmEngine
from strategies.base import Message, Sample

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is 2 + 3? Give only the final answer."}]
CRITIQUE = (Message("assistant", "The answer is 5."),
            Message("user", "Is that answer right? Reply yes or no."))
VERDICT_SCHEMA = {"type": "object", "properties": {"verdict": {"enum": ["keep", "revise"]}},
                  "required": ["verdict"], "additionalProperties": False}


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(loop: asyncio.AbstractEventLoop, embedded_model_dir: Path) -> Iterator[VllmEngine]:
    _, args = resolve_serve_args([str(embedded_model_dir), "--served-model-name", "smollm2",
                                  "--max-model-len", "1024", "--enforce-eager"])
    engine = loop.run_until_complete(VllmEngine.start(args))
    yield engine
    loop.run_until_complete(engine.shutdown())


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "smollm2", "messages": QUESTION, "temperature": 0.8, "max_tokens": 12,
         "seed": 7, **fields})


def open_sampler(loop: asyncio.AbstractEventLoop, engine: VllmEngine,
                 **fields: object) -> OpenedSampler:
    return loop.run_until_complete(engine.open_sampler(request(**fields), "sampler-test", 4))


def unfinished(engine: VllmEngine) -> int:
    return engine.async_llm.output_processor.get_num_unfinished_requests()


def settle(engine: VllmEngine, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while unfinished(engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    return unfinished(engine)


def test_samples_of_the_request_share_one_prompt_and_follow_its_parameters(
    loop: asyncio.AbstractEventLoop, engine: VllmEngine
) -> None:
    opened = open_sampler(loop, engine)

    async def draw() -> list[Sample]:
        return list(await asyncio.gather(*opened.sampler.submit(3)))

    samples = loop.run_until_complete(draw())
    assert [s.index for s in samples] == [0, 1, 2]
    assert all(1 <= s.num_tokens <= 12 for s in samples)
    assert all(len(s.token_certainty) == s.num_tokens for s in samples)
    assert opened.usage.prompts == 1 and opened.usage.sub_requests == 3
    assert opened.usage.completion_tokens == sum(s.num_tokens for s in samples)


def test_a_sampler_asked_for_no_certainty_samples_the_same_tokens_without_it(
    loop: asyncio.AbstractEventLoop, engine: VllmEngine
) -> None:
    def draw(certainty_source: str | None) -> tuple[OpenedSampler, list[Sample]]:
        opened = loop.run_until_complete(engine.open_sampler(
            request(), f"sampler-test-{certainty_source}", 3, certainty_source))

        async def samples() -> list[Sample]:
            return list(await asyncio.gather(*opened.sampler.submit(3)))

        return opened, loop.run_until_complete(samples())

    plain, bare = draw("none")
    exact, measured = draw(None)
    assert plain.sampler.certainty_method is None and exact.sampler.certainty_method == "exact"
    # Logprobs only ride along: the same seeds sample the same tokens without them.
    assert [s.token_ids for s in bare] == [s.token_ids for s in measured]
    assert all(s.certainty is None and s.token_certainty == () and s.cumulative_logprob is None
               and s.entropy is None for s in bare)
    assert all(s.certainty is not None and s.cumulative_logprob is not None for s in measured)
    assert plain.usage.completion_tokens == sum(s.num_tokens for s in bare)


def test_a_continued_conversation_starts_with_the_request_prompt(
    loop: asyncio.AbstractEventLoop, engine: VllmEngine
) -> None:
    render = prompt_renderer(engine.chat, request())

    async def both() -> tuple[list[int], list[int]]:
        base, continued = await render(()), await render(CRITIQUE)
        return (base.engine_input["prompt_token_ids"],
                continued.engine_input["prompt_token_ids"])

    base, continued = loop.run_until_complete(both())
    # The request's prompt ends with the assistant turn's header, which the draft continues:
    # every token of it is the continuation's prefix, so its full KV blocks are reused.
    assert len(continued) > len(base)
    assert continued[: len(base)] == base


def test_per_call_messages_temperature_and_max_tokens(
    loop: asyncio.AbstractEventLoop, engine: VllmEngine
) -> None:
    opened = open_sampler(loop, engine)
    before = opened.usage.prompt_tokens

    async def draw() -> list[Sample]:
        return list(await asyncio.gather(
            *opened.sampler.submit(2, messages=CRITIQUE, temperature=0.0, max_tokens=3)))

    first, second = loop.run_until_complete(draw())
    assert first.text == second.text  # greedy, whatever the seeds
    assert 1 <= first.num_tokens <= 3
    assert opened.usage.prompts == 2  # the request's prompt and the continued one, once each
    assert opened.usage.prompt_tokens > 2 * before


def test_a_json_schema_constrains_the_sample_and_certainty_still_comes_back(
    loop: asyncio.AbstractEventLoop, engine: VllmEngine
) -> None:
    opened = open_sampler(loop, engine)

    async def draw() -> Sample:
        (task,) = opened.sampler.submit(1, messages=CRITIQUE, json_schema=VERDICT_SCHEMA,
                                        max_tokens=40, temperature=0.7)
        return await task

    sample = loop.run_until_complete(draw())
    assert sample.finish_reason == "stop", sample.text
    assert json.loads(sample.text)["verdict"] in ("keep", "revise")
    assert opened.sampler.certainty_method == "exact"
    assert sample.certainty is not None and len(sample.token_certainty) == sample.num_tokens


def test_a_watcher_stops_its_sample_and_the_engine_request(
    loop: asyncio.AbstractEventLoop, engine: VllmEngine
) -> None:
    opened = open_sampler(loop, engine, max_tokens=400, ignore_eos=True)
    seen: list[int] = []

    def watch(certainties: object) -> bool:
        seen.append(len(certainties))  # type: ignore[arg-type]
        return len(certainties) >= 5  # type: ignore[arg-type]

    async def draw() -> tuple[Sample, Sample]:
        watched, free = opened.sampler.submit(1, watch=watch)[0], \
            opened.sampler.submit(1, max_tokens=8)[0]
        return await watched, await free

    watched, free = loop.run_until_complete(draw())
    assert watched.stopped_by_watcher and watched.finish_reason == "terminated"
    assert 5 <= watched.num_tokens < 400
    assert len(watched.token_certainty) == watched.num_tokens == seen[-1]
    assert seen == sorted(seen)  # called as tokens arrived, with everything so far
    assert not free.stopped_by_watcher and free.num_tokens == 8
    assert settle(engine) == 0
    assert opened.usage.aborted == 1


def test_abort_outstanding_ends_every_engine_request(
    loop: asyncio.AbstractEventLoop, engine: VllmEngine
) -> None:
    opened = open_sampler(loop, engine, max_tokens=900, ignore_eos=True)

    async def start_then_abort() -> list[object]:
        tasks = opened.sampler.submit(3)
        while unfinished(engine) < 3:
            await asyncio.sleep(0.02)
        await opened.sampler.abort_outstanding()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    outcomes = loop.run_until_complete(start_then_abort())
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert settle(engine) == 0
    assert opened.usage.aborted == 3


def test_a_continuation_past_the_context_fails_that_sample_as_a_400(
    loop: asyncio.AbstractEventLoop, engine: VllmEngine
) -> None:
    opened = open_sampler(loop, engine)
    huge = (Message("user", "word " * 1500),)

    async def draw() -> BaseException:
        (task,) = opened.sampler.submit(1, messages=huge)
        try:
            await task
        except Exception as exc:  # noqa: BLE001  the classification is what is tested
            return exc
        raise AssertionError("a prompt past the context was sampled")

    error = classify(loop.run_until_complete(draw()))
    assert error.status == 400 and error.type == "invalid_request_error"
