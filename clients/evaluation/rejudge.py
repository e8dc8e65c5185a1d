"""`refinery eval --rejudge`: score a run's stored replies again with today's judge.

A judge is code — answer extraction, a task's verifier, the HumanEval sandbox — and code gets
fixed: until the extraction learnt that "The final answer is: Answer: No" states the answer
"No", a third of the 1.5B model's syllogism replies were scored wrong whatever they said. Every
outcome keeps the text the server returned (`Outcome.reply`), so a run — its results.json and
the pass in progress in partial.json — can be scored again without asking the model again;
tokens, sub-requests and latencies are what was measured and stay as they are.

What a rejudge cannot change is what the server chose: a strategy that votes on or ranks by
extracted answers (self-consistency, Borda, DeepConf, the refinement's vote) chose with the
extraction it ran with. `Rejudged` counts changed verdicts per strategy so that the user can
tell which passes to measure again; a plain request, best-of-N by certainty and a refinement
that selects by certainty choose without reading the answer, and for them a rejudge is the run
as the fixed judge would have scored it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from clients.evaluation.summary import Outcome
from clients.evaluation.tasks import Question, Task

__all__ = ["Rejudged", "rejudge_outcomes"]


@dataclass
class Rejudged:
    """Verdicts a rejudge turned, per strategy label: wrong → right and right → wrong."""

    now_right: dict[str, int]
    now_wrong: dict[str, int]

    def line(self, label: str) -> str:
        return (f"{label}: {self.now_right.get(label, 0)} now right, "
                f"{self.now_wrong.get(label, 0)} now wrong")


def rejudge_outcomes(task: Task, questions: Mapping[str, Question], label: str,
                     outcomes: Sequence[Outcome], tally: Rejudged) -> list[Outcome]:
    """`outcomes` judged again from their replies; an outcome without a reply (an HTTP error,
    a timeout) keeps its verdict. ValueError when a question is not among `questions` (the run
    was measured on other questions than its settings give)."""
    judged = []
    for outcome in outcomes:
        if outcome.error is not None or outcome.reply is None:
            judged.append(outcome)
            continue
        question = questions.get(outcome.question_id)
        if question is None:
            raise ValueError(f"question {outcome.question_id!r} of {label!r} is not among the "
                             "questions the run's settings give")
        judgement = task.judge(question, outcome.reply)
        if judgement.correct != outcome.correct:
            counter = tally.now_right if judgement.correct else tally.now_wrong
            counter[label] = counter.get(label, 0) + 1
        judged.append(replace(outcome, correct=judgement.correct, answer=judgement.answer,
                              detail=judgement.detail))
    return judged
