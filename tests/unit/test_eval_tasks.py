"""`refinery eval`'s task adapters: names parsed, questions seeded, and each task's judge
agreeing with its own reference answers (and refusing wrong ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.evaluation.tasks import (
    HumanEvalTask,
    JsonlTask,
    Judgement,
    ReasoningGymTask,
    humaneval_program,
    parse_task,
)
from strategies.answers import extract_answer, parse_answer_format


def reply_with(answer: str) -> str:
    return f"Let me think. Some steps, 12 and 7.\nAnswer: {answer}"


def test_reasoning_gym_names_carry_parameters_as_json_values() -> None:
    task = parse_task("reasoning_gym:chain_sum?min_terms=2&max_terms=3&allow_negation=false")
    assert isinstance(task, ReasoningGymTask)
    assert task.params == {"min_terms": 2, "max_terms": 3, "allow_negation": False}
    assert task.name == "reasoning_gym:chain_sum?min_terms=2&max_terms=3&allow_negation=false"


@pytest.mark.parametrize("spec", ["reasoning_gym:no_such_task", "reasoning_gym:", "gsm8k",
                                  "reasoning_gym:chain_sum?min_terms"])
def test_bad_task_names_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_task(spec)


def test_reasoning_gym_questions_are_seeded_and_judged_by_its_verifier() -> None:
    task = parse_task("reasoning_gym:chain_sum?min_terms=2&max_terms=2")
    first = task.questions(5, seed=3)
    assert [q.messages for q in first] == [q.messages for q in task.questions(5, seed=3)]
    assert [q.messages for q in first] != [q.messages for q in task.questions(5, seed=4)]
    assert len(first) == 5 and "Answer: <answer>" in first[0].messages[0]["content"]
    for question in first:
        gold = question.gold["answer"]
        assert task.judge(question, reply_with(gold)).correct
        assert not task.judge(question, reply_with(str(int(gold) + 1))).correct
        assert not task.judge(question, "I do not know.").correct


@pytest.mark.parametrize("shape", [
    "Steps: 3 + 4.\nAnswer: {gold}", "So the result is \\boxed{{{gold}}}.",
    "First 12, then 7.\nThe answer is {gold} apples.", "Adding up gives {gold}",
    "Answer: ${gold}", "No final answer here."])
def test_reasoning_gym_judges_exactly_the_answer_strategies_vote_on(shape: str) -> None:
    """A sample the judge reads an answer from must carry that answer into the vote, and a
    sample without one must not vote: the judge and the strategies use one answer format."""
    task = parse_task("reasoning_gym:chain_sum?min_terms=2&max_terms=2")
    question = task.questions(1, seed=0)[0]
    reply = shape.format(gold=question.gold["answer"])
    voted = extract_answer(reply, parse_answer_format(task.answer_format))
    judgement = task.judge(question, reply)
    assert judgement.answer == voted
    assert judgement.correct == (voted == question.gold["answer"])


@pytest.mark.parametrize("shape", ["The final answer is: Answer: {gold}",
                                   "Thus, the answer is:\n\nAnswer: {gold}",
                                   "So the answer is {gold}."])
def test_syllogism_answers_stated_twice_are_judged_by_the_answer(shape: str) -> None:
    """The 1.5B model ends yes/no answers with "The final answer is: Answer: No"; reasoning-gym's
    verifier compares the whole extracted string, so the marker must not reach it."""
    task = parse_task("reasoning_gym:syllogism")
    for question in task.questions(6, seed=7):
        gold = question.gold["answer"]
        wrong = "No" if gold == "Yes" else "Yes"
        assert task.judge(question, shape.format(gold=gold)) == Judgement(True, gold)
        assert not task.judge(question, shape.format(gold=wrong)).correct


def test_reasoning_gym_without_an_answer_line_falls_back_to_the_last_number() -> None:
    task = parse_task("reasoning_gym:chain_sum?min_terms=2&max_terms=2")
    question = task.questions(1, seed=0)[0]
    judgement = task.judge(question, f"The sum is {question.gold['answer']}.")
    assert judgement.correct and judgement.answer == question.gold["answer"]


def test_humaneval_has_164_problems_and_a_seeded_subset() -> None:
    task = parse_task("humaneval")
    assert isinstance(task, HumanEvalTask)
    assert len(task.questions(None, seed=0)) == 164
    subset = [q.id for q in task.questions(5, seed=1)]
    assert subset == [q.id for q in task.questions(5, seed=1)] and len(set(subset)) == 5


@pytest.fixture(scope="module")
def humaneval_problems() -> dict[str, object]:
    return {q.id: q for q in HumanEvalTask().questions(None, seed=0)}


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/32", "HumanEval/38",
                                     "HumanEval/162"])
def test_humaneval_canonical_solutions_pass_in_every_reply_shape(
    humaneval_problems: dict, task_id: str
) -> None:
    """A fenced full function, a bare body (completion style) and the prompt's helpers
    (HumanEval/38 decodes with the prompt's encode_cyclic; /162 imports hashlib)."""
    question = humaneval_problems[task_id]
    problem = question.gold
    full = f"Here it is:\n```python\n{problem['prompt']}{problem['canonical_solution']}```\n"
    task = HumanEvalTask()
    assert task.judge(question, full) == Judgement(True, "passed", None)
    assert task.judge(question, problem["canonical_solution"]).correct


def test_humaneval_wrong_or_missing_code_fails(humaneval_problems: dict) -> None:
    question = humaneval_problems["HumanEval/0"]
    entry = question.gold["entry_point"]
    task = HumanEvalTask()
    wrong = task.judge(question, f"```python\ndef {entry}(numbers, threshold):\n"
                                 "    return False\n```")
    assert not wrong.correct and "AssertionError" in wrong.detail  # the sandbox's tail
    refusal = task.judge(question, "Sorry, I cannot help with that.")
    assert not refusal.correct and "SyntaxError" in refusal.detail


def test_humaneval_program_runs_the_problem_tests(humaneval_problems: dict) -> None:
    problem = humaneval_problems["HumanEval/0"].gold
    program = humaneval_program(problem, "```python\ndef x(): pass\n```")
    assert program.rstrip().endswith(f"check({problem['entry_point']})")
    assert problem["test"] in program


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_jsonl_prompts_and_messages_are_judged_with_math_verify(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"prompt": "Half of one?", "answer": "1/2"},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Square root of 4?"}], "answer": 2, "id": "r"},
    ])
    task = parse_task(str(path), answer_format="boxed")
    assert isinstance(task, JsonlTask) and task.answer_format == "boxed"
    half, root = task.questions(None, seed=0)
    assert half.messages == ({"role": "user", "content": "Half of one?"},)
    assert root.id == "r" and root.messages[0]["role"] == "system"
    assert task.judge(half, "It is \\boxed{0.5}").correct
    assert task.judge(half, "It is \\boxed{\\frac{1}{2}}").correct
    assert not task.judge(half, "It is \\boxed{0.25}").correct
    assert not task.judge(half, "It is 0.5").correct  # no boxed answer in a boxed task
    assert task.judge(root, "\\boxed{2}").correct


def test_jsonl_limit_takes_a_seeded_subset_in_file_order(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl",
                       [{"prompt": f"q{i}", "answer": i} for i in range(20)])
    task = parse_task(f"jsonl:{path}")
    picked = [q.id for q in task.questions(5, seed=2)]
    assert picked == [q.id for q in task.questions(5, seed=2)]
    assert picked == sorted(picked, key=int) and len(picked) == 5


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "not JSON"),
    ('{"prompt": "x"}', '"answer"'),
    ('{"answer": 1}', '"prompt"'),
    ('{"messages": [], "answer": 1}', '"prompt"'),
])
def test_bad_jsonl_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "answer": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"{path}:2: .*{message}"):
        parse_task(str(path)).questions(None, seed=0)
