"""`refinery eval`'s pass in progress: partial.json written and read back, a file that is no
checkpoint named, and `--resume` deciding which half-done pass to finish, drop or refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.evaluation.checkpoint import PARTIAL_FILE, drop_pass, read_pass, write_pass
from clients.evaluation.command import _unfinished_pass, run_eval
from clients.evaluation.runner import PassSoFar, ServerUnreachable, StrategyChoice, StrategyRun
from clients.evaluation.summary import Outcome
from clients.evaluation.tasks import parse_task

SC8 = StrategyChoice("sc8", {"name": "self_consistency", "max_samples": 8})
FACTS = {"task": "reasoning_gym:chain_sum", "questions": 3, "seed": 0, "concurrency": 8,
         "max_tokens": 512, "temperature": 0.7}


def questions():
    return parse_task("reasoning_gym:chain_sum", "auto").questions(3, 0)


def half_done(choice: StrategyChoice = SC8) -> PassSoFar:
    ids = [q.id for q in questions()]
    return PassSoFar(choice, {2: Outcome(ids[2], True, "5", 90, 40, 8, 3.5,
                                         strategy_report={"votes": {"5": 6, "4": 2}}),
                              0: Outcome(ids[0], False, None, 0, 0, 0, 1.0, "HTTP 504: late")},
                     12.5, 1)


def test_a_pass_so_far_reads_back_as_written(tmp_path: Path) -> None:
    write_pass(tmp_path, {**FACTS, "model": "m"}, half_done())
    settings, so_far = read_pass(tmp_path)
    assert settings == {**FACTS, "model": "m"}
    assert so_far == half_done()
    assert [p.name for p in tmp_path.iterdir()] == [PARTIAL_FILE]  # no staging file left
    drop_pass(tmp_path)
    assert read_pass(tmp_path) is None
    drop_pass(tmp_path)  # nothing to drop is fine


def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / PARTIAL_FILE).write_text('{"strategy": "sc8"}')
    with pytest.raises(ValueError, match="is not a refinery eval partial.json.*delete it"):
        read_pass(tmp_path)


def test_the_named_strategy_is_finished_asking_again_what_got_no_reply(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Question 2's answer is kept; question 0 got an HTTP 504 (no reply), so the finished
    pass asks it again rather than keeping it as wrong."""
    so_far = half_done()
    kept = _unfinished_pass(so_far, [StrategyChoice("single", None), SC8], [], questions(),
                            tmp_path)
    assert kept == PassSoFar(SC8, {2: so_far.outcomes[2]}, 12.5, 1)
    assert ("asking again the 1 question(s) of 'sc8' the earlier sitting got no reply for "
            "(e.g. HTTP 504: late)") in capsys.readouterr().err
    answered = PassSoFar(SC8, {2: so_far.outcomes[2]}, 12.5, 1)
    assert _unfinished_pass(answered, [SC8], [], questions(), tmp_path) == answered
    assert capsys.readouterr().err == ""


def test_a_pass_results_json_already_holds_is_dropped(tmp_path: Path) -> None:
    write_pass(tmp_path, FACTS, half_done())
    finished = StrategyRun(SC8, (), 1.0)
    assert _unfinished_pass(half_done(), [SC8], [finished], questions(), tmp_path) is None
    assert read_pass(tmp_path) is None


def test_a_pass_of_a_strategy_not_named_is_dropped_saying_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_pass(tmp_path, FACTS, half_done())
    assert _unfinished_pass(half_done(), [StrategyChoice("single", None)], [], questions(),
                            tmp_path) is None
    assert "dropping the unfinished pass of 'sc8' (2 questions answered)" in (
        capsys.readouterr().err)
    assert read_pass(tmp_path) is None


def test_a_pass_under_another_spec_or_other_questions_is_refused(tmp_path: Path) -> None:
    other = StrategyChoice("sc8", {"name": "self_consistency", "max_samples": 4})
    with pytest.raises(ValueError, match="'sc8' was measured as .* another label"):
        _unfinished_pass(half_done(), [other], [], questions(), tmp_path)
    with pytest.raises(ValueError, match="measured on other questions"):
        _unfinished_pass(half_done(), [SC8], [], questions()[:2], tmp_path)


def test_resume_refuses_a_pass_measured_under_other_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before any server is asked: the base URL below has nothing listening."""
    write_pass(tmp_path, {**FACTS, "max_tokens": 384}, half_done())
    code = run_eval(["--task", "reasoning_gym:chain_sum", "--limit", "3", "--resume",
                     "--out", str(tmp_path), "--base-url", "http://127.0.0.1:9", "--quiet"])
    assert code == 2
    assert "max_tokens (384 there, 512 now)" in capsys.readouterr().err


def test_a_server_gone_mid_run_leaves_the_pass_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The runner stops with ServerUnreachable after an answer was kept: the command exits 2,
    names the file the answers are in and says --resume goes on from them."""
    from clients.evaluation import command

    async def presets(base_url: str, api_key: str | None) -> tuple[str, dict]:
        return "m", {"sc8": dict(SC8.spec)}

    async def evaluate(*args, on_answer, **kwargs):
        on_answer(half_done())
        raise ServerUnreachable("the server at http://gone is not serving (3 tries)")

    monkeypatch.setattr(command, "server_presets", presets)
    monkeypatch.setattr(command, "evaluate", evaluate)
    code = run_eval(["--task", "reasoning_gym:chain_sum", "--limit", "3", "--strategies", "sc8",
                     "--out", str(tmp_path), "--base-url", "http://gone", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "is not serving (3 tries)" in err
    assert f"kept in {tmp_path / PARTIAL_FILE}; the same command with --resume" in err
    assert read_pass(tmp_path)[1] == half_done()
