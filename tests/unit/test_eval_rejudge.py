"""`refinery eval --rejudge`: the replies a run holds scored again with the current judge —
results.json and partial.json rewritten, measurements and failed questions kept, other runs'
folders refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from clients.evaluation.checkpoint import read_pass, write_pass
from clients.evaluation.command import run_eval
from clients.evaluation.report import read_runs, summarise_runs, write_report
from clients.evaluation.runner import PassSoFar, StrategyChoice, StrategyRun
from clients.evaluation.summary import Outcome
from clients.evaluation.tasks import parse_task

TASK = "reasoning_gym:syllogism"
SETTINGS = {"task": TASK, "questions": 3, "seed": 7, "concurrency": 4, "max_tokens": 384,
            "temperature": 0.7, "model": "m"}
SINGLE = StrategyChoice("single", None)
BON8 = StrategyChoice("bon8", {"name": "best_of_n", "n": 8})


def stated_twice(gold: str) -> str:
    """How the 1.5B model ends a syllogism: the old extraction read "Answer: <gold>"."""
    return f"All A are B, so ...\nThe final answer is: Answer: {gold}"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run scored by the old judge: question 0 right, 1 stated twice (scored wrong), 2 a 504."""
    golds = [(q.id, q.gold["answer"]) for q in parse_task(TASK).questions(3, 7)]
    outcomes = (
        Outcome(golds[0][0], True, golds[0][1], 150, 90, 1, 20.0, reply=f"Answer: {golds[0][1]}"),
        Outcome(golds[1][0], False, f"Answer: {golds[1][1]}", 170, 95, 1, 25.0,
                reply=stated_twice(golds[1][1])),
        Outcome(golds[2][0], False, None, 0, 0, 0, 600.0, "HTTP 504: deadline"),
    )
    runs = [StrategyRun(SINGLE, outcomes, 60.0)]
    write_report(tmp_path, SETTINGS, runs, summarise_runs(runs, 7), plot=False)
    write_pass(tmp_path, SETTINGS, PassSoFar(BON8, {1: replace(outcomes[1], sub_requests=8)},
                                             40.0, 1))
    return tmp_path


def test_rejudge_scores_the_stored_replies_again_and_keeps_the_measurements(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = read_runs(run_dir / "results.json")[1][0].outcomes
    assert run_eval(["--task", TASK, "--out", str(run_dir), "--rejudge", "--no-plot"]) == 0
    settings, (single,) = read_runs(run_dir / "results.json")
    right, twice, late = single.outcomes
    assert right == before[0]
    assert twice.correct and twice.answer == before[1].answer.removeprefix("Answer: ")
    assert replace(twice, correct=False, answer=before[1].answer) == before[1]  # tokens, latency
    assert late == before[2]  # no reply: its verdict stands
    assert settings["rejudged"][0].endswith(f"refinery eval --task {TASK} --out {run_dir} "
                                            "--rejudge --no-plot")
    assert (run_dir / "results.md").read_text().count("0.667") == 1  # 2 of 3 right now
    partial_settings, so_far = read_pass(run_dir)
    assert partial_settings == SETTINGS and so_far.outcomes[1].correct
    assert so_far.outcomes[1].sub_requests == 8 and so_far.wall_s == 40.0
    err = capsys.readouterr().err
    assert "single: 1 now right, 0 now wrong" in err and "bon8: 1 now right, 0 now wrong" in err


def test_a_second_rejudge_changes_nothing_and_is_recorded(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--task", TASK, "--out", str(run_dir), "--rejudge", "--no-plot"]
    assert run_eval(argv) == 0
    first = read_runs(run_dir / "results.json")[1]
    assert run_eval(argv) == 0
    settings, again = read_runs(run_dir / "results.json")
    assert again == first and len(settings["rejudged"]) == 2
    assert "single: 0 now right, 0 now wrong" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--task", TASK, "--rejudge"], "--rejudge needs --out"),
    (["--task", "reasoning_gym:chain_sum", "--rejudge"], "differs in task"),
    (["--task", TASK, "--rejudge", "--resume"], "run it first, then --resume"),
])
def test_rejudge_refuses_what_it_cannot_score(run_dir: Path, argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    if message != "--rejudge needs --out":
        argv = [*argv, "--out", str(run_dir)]
    assert run_eval(argv) == 2
    assert message in capsys.readouterr().err
    assert not read_runs(run_dir / "results.json")[0].get("rejudged")


def test_rejudge_of_an_empty_folder_is_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert run_eval(["--task", TASK, "--out", str(tmp_path), "--rejudge"]) == 2
    assert "holds no results.json or partial.json" in capsys.readouterr().err
