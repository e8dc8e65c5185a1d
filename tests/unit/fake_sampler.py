"""A scripted Sampler for strategy unit tests: sample i returns script[i]; tracks aborts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

from strategies.base import Sample


@dataclass
class Scripted:
    text: str
    certainty: float | None = None
    tokens: int = 5
    logprob: float | None = None  # cumulative
    delay: float = 0.0  # seconds before it finishes
    hangs: bool = False  # never finishes unless aborted


@dataclass
class FakeSampler:
    script: Sequence[Scripted]
    certainty_method: str = "topk"
    submitted: list[tuple[int, int]] = field(default_factory=list)  # (index, priority)
    aborted: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    _tasks: dict[int, asyncio.Task[Sample]] = field(default_factory=dict)

    def submit(self, count: int, *, priority: int = 0) -> list[Awaitable[Sample]]:
        tasks = []
        for _ in range(count):
            index = len(self.submitted)
            if index >= len(self.script):
                raise AssertionError(f"strategy asked for sample {index}, script has "
                                     f"{len(self.script)}")
            self.submitted.append((index, priority))
            task = asyncio.create_task(self._draw(index))
            self._tasks[index] = task
            tasks.append(task)
        return tasks

    async def _draw(self, index: int) -> Sample:
        step = self.script[index]
        try:
            if step.hangs:
                await asyncio.Event().wait()
            await asyncio.sleep(step.delay)
        except asyncio.CancelledError:
            self.aborted.append(index)
            raise
        self.finished.append(index)
        return Sample(index=index, text=step.text, token_ids=tuple(range(step.tokens)),
                      finish_reason="stop", cumulative_logprob=step.logprob,
                      certainty=step.certainty)

    async def abort_outstanding(self) -> None:
        outstanding = [t for t in self._tasks.values() if not t.done()]
        for task in outstanding:
            task.cancel()
        await asyncio.gather(*outstanding, return_exceptions=True)

    @property
    def outstanding(self) -> list[int]:
        return [i for i, t in self._tasks.items() if not t.done()]


def answers(*values: str, **kwargs: object) -> list[Scripted]:
    """Completions ending in 'The answer is X.' for each X."""
    return [Scripted(f"Let me think. The answer is {v}.", **kwargs) for v in values]
