"""`refinery eval`'s numbers and files: the bootstrap interval, per-strategy summaries, and the
table / JSON / Markdown / plot the report writer leaves behind."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.evaluation.command import _warn_of_deadlines, run_eval
from clients.evaluation.report import (
    markdown_table,
    read_runs,
    summarise_runs,
    text_table,
    write_report,
)
from clients.evaluation.runner import StrategyChoice, StrategyRun
from clients.evaluation.summary import (
    Outcome,
    bootstrap_interval,
    mcnemar_exact_p,
    percentile,
    summarise,
)


def outcome(i: int, correct: bool, tokens: int = 100, subs: int = 1,
            latency: float = 1.0, error: str | None = None) -> Outcome:
    return Outcome(f"q{i}", correct, "42" if correct else "41", tokens, 50, subs, latency, error)


def test_bootstrap_interval_matches_the_normal_approximation_for_a_large_sample() -> None:
    values = [1.0] * 300 + [0.0] * 700  # p = 0.3, n = 1000: ±1.96·sqrt(p(1-p)/n) ≈ ±0.028
    low, high = bootstrap_interval(values, seed=1)
    assert low == pytest.approx(0.3 - 0.0284, abs=0.006)
    assert high == pytest.approx(0.3 + 0.0284, abs=0.006)


def test_bootstrap_interval_is_seeded() -> None:
    values = [(i * 37 % 101) / 101 for i in range(50)]
    assert bootstrap_interval(values, resamples=200, seed=5) == bootstrap_interval(
        values, resamples=200, seed=5)
    assert bootstrap_interval(values, resamples=200, seed=5) != bootstrap_interval(
        values, resamples=200, seed=6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=40), st.integers(0, 99))
def test_bootstrap_interval_contains_the_mean_and_stays_in_range(values: list[float],
                                                                 seed: int) -> None:
    low, high = bootstrap_interval(values, resamples=300, seed=seed)
    mean = sum(values) / len(values)
    assert 0.0 <= low <= high <= 1.0
    assert low - 1e-9 <= mean <= high + 1e-9 or low == high


def test_all_right_or_all_wrong_gives_a_point_interval() -> None:
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    assert bootstrap_interval([0.0] * 10) == (0.0, 0.0)
    assert all(math.isnan(v) for v in bootstrap_interval([]))


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(4.8)
    assert math.isnan(percentile([], 50))


def test_summary_counts_tokens_sub_requests_latency_and_rate() -> None:
    outcomes = [outcome(0, True, 200, 8, 1.0), outcome(1, False, 100, 4, 3.0),
                outcome(2, True, 300, 8, 2.0), outcome(3, False, 0, 0, 0.5, error="HTTP 503")]
    row = summarise("sc8", outcomes, wall_s=2.0)
    assert (row.questions, row.correct, row.accuracy) == (4, 2, 0.5)
    assert row.completion_tokens_per_question == 150
    assert row.prompt_tokens_per_question == 50
    assert row.sub_requests_per_question == 5
    assert row.latency_p50_s == 1.5 and row.questions_per_s == 2.0 and row.errors == 1
    assert row.ci_low <= 0.5 <= row.ci_high


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, list[Path]]:
    runs = [StrategyRun(StrategyChoice("single", None), (outcome(0, True), outcome(1, False)), 2),
            StrategyRun(StrategyChoice("sc8", {"name": "self_consistency", "max_samples": 8}),
                        (outcome(0, True, 800, 8), outcome(1, True, 700, 8)), 4)]
    rows = [summarise(r.choice.label, r.outcomes, r.wall_s) for r in runs]
    settings_ = {"task": "reasoning_gym:chain_sum", "model": "smollm2", "questions": 2,
                 "command": "refinery eval --task reasoning_gym:chain_sum"}
    return tmp_path, write_report(tmp_path / "out", settings_, runs, rows)


def test_the_report_writes_json_markdown_and_a_plot(report: tuple[Path, list[Path]]) -> None:
    root, paths = report
    assert [p.name for p in paths] == ["results.json", "results.md", "accuracy_vs_tokens.png"]
    data = json.loads(paths[0].read_text())
    assert [s["strategy"] for s in data["summaries"]] == ["single", "sc8"]
    assert data["summaries"][1]["accuracy"] == 1.0
    assert data["runs"][1]["spec"]["max_samples"] == 8
    assert data["runs"][0]["outcomes"][1]["correct"] is False
    assert data["settings"]["model"] == "smollm2"
    markdown = paths[1].read_text()
    assert "refinery eval --task reasoning_gym:chain_sum" in markdown
    assert "| sc8 | 1.000 |" in markdown
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_written_report_reads_back_as_the_same_runs(report: tuple[Path, list[Path]]) -> None:
    root, paths = report
    settings_, runs = read_runs(paths[0])
    assert settings_["model"] == "smollm2"
    assert [run.choice for run in runs] == [
        StrategyChoice("single", None),
        StrategyChoice("sc8", {"name": "self_consistency", "max_samples": 8})]
    assert runs[1].outcomes == (outcome(0, True, 800, 8), outcome(1, True, 700, 8))
    assert runs[1].wall_s == 4


def test_a_file_that_is_no_report_is_named(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"settings": {}}')
    with pytest.raises(ValueError, match="is not a refinery eval results.json"):
        read_runs(path)


def test_resume_needs_the_folder_of_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_eval(["--task", "reasoning_gym:chain_sum", "--resume", "--quiet"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_resume_refuses_an_earlier_run_with_other_settings(
        report: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before any server is asked: the base URL below has nothing listening."""
    root, _ = report
    code = run_eval(["--task", "reasoning_gym:chain_sum", "--limit", "3", "--resume",
                     "--out", str(root / "out"), "--base-url", "http://127.0.0.1:9", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "questions (2 there, 3 now)" in err and "use another --out" in err


def test_tables_have_one_row_per_strategy() -> None:
    rows = [summarise("single", [outcome(0, True)], 1.0),
            summarise("bon8", [outcome(0, False, 900, 8)], 1.0)]
    text = text_table(rows).splitlines()
    assert len(text) == 3 and text[0].startswith("strategy") and text[2].startswith("bon8")
    assert len({len(line) for line in text}) == 1  # aligned
    assert markdown_table(rows).count("\n") == 3


def test_a_pass_over_several_sittings_is_named_and_read_back(tmp_path: Path) -> None:
    runs = [StrategyRun(StrategyChoice("single", None), (outcome(0, True),), 2.0),
            StrategyRun(StrategyChoice("bon8", "bon8"), (outcome(0, True, 900, 8),), 9.0, 3)]
    rows = [summarise(r.choice.label, r.outcomes, r.wall_s) for r in runs]
    json_path, md_path = write_report(tmp_path, {"task": "t"}, runs, rows, plot=False)
    assert "several sittings: bon8 (3)." in md_path.read_text()
    assert [run.sittings for run in read_runs(json_path)[1]] == [1, 3]


def test_passes_slowed_by_429s_are_named_with_their_refusals(tmp_path: Path) -> None:
    throttled = Outcome("q1", True, "42", 100, 50, 8, 9.0, throttled=3)
    runs = [StrategyRun(StrategyChoice("single", None), (outcome(0, True),), 2.0),
            StrategyRun(StrategyChoice("deepconf", "deepconf"),
                        (outcome(0, True), throttled, replace(throttled, throttled=2)), 9.0)]
    rows = [summarise(r.choice.label, r.outcomes, r.wall_s) for r in runs]
    json_path, md_path = write_report(tmp_path, {"task": "t"}, runs, rows, plot=False)
    assert "throttled (429 at capacity, asked again after Retry-After): deepconf (2 questions, " \
        "5 refusals)." in md_path.read_text()
    assert [o.throttled for o in read_runs(json_path)[1][1].outcomes] == [0, 3, 2]
    write_report(tmp_path, {"task": "t"}, runs[:1], rows[:1], plot=False)
    assert "throttled" not in md_path.read_text()


def test_what_each_question_went_through_is_kept_and_older_files_still_read(
        tmp_path: Path) -> None:
    report_ = {"name": "adaptive_refine", "route": "hard", "agreement": 0.4,
               "refinements": [{"from_answer": "No", "iterations": 2}],
               "usage": {"sub_requests": 9}}
    runs = [StrategyRun(StrategyChoice("adaptive", "adaptive"),
                        (Outcome("q0", True, "Yes", 900, 50, 9, 9.0, strategy_report=report_),
                         outcome(1, False)), 9.0)]
    rows = [summarise(r.choice.label, r.outcomes, r.wall_s) for r in runs]
    json_path, _ = write_report(tmp_path, {"task": "t"}, runs, rows, plot=False)
    assert read_runs(json_path)[1][0].outcomes == runs[0].outcomes
    data = json.loads(json_path.read_text())
    for stored in data["runs"][0]["outcomes"]:  # a results.json written before the field
        del stored["strategy_report"]
    json_path.write_text(json.dumps(data))
    assert [o.strategy_report for o in read_runs(json_path)[1][0].outcomes] == [None, None]


def test_questions_past_the_server_deadline_are_pointed_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    late = "HTTP 504: the request ran past this server's limit of 600 s and was aborted"
    run = StrategyRun(StrategyChoice("bon8", "bon8"),
                      (outcome(0, True), outcome(1, False, error=late),
                       outcome(2, False, error="HTTP 503: overloaded")), 9.0)
    _warn_of_deadlines(run, 16)
    err = capsys.readouterr().err
    assert "1 of 3 questions under 'bon8' ran past" in err and "--concurrency (now 16)" in err
    _warn_of_deadlines(StrategyRun(run.choice, run.outcomes[::2], 9.0), 16)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("won", "lost", "p"), [
    (19, 3, 0.00085545), (3, 19, 0.00085545), (5, 9, 0.42395), (23, 2, 0.0000194311), (1, 1, 1.0),
    (0, 0, 1.0), (6, 0, 0.03125)])
def test_the_exact_mcnemar_p_value_is_the_two_sided_binomial_tail(won: int, lost: int,
                                                                   p: float) -> None:
    """Reference values: scipy.stats.binomtest(min, won + lost, 0.5).pvalue."""
    assert mcnemar_exact_p(won, lost) == pytest.approx(p, rel=1e-3)


def test_strategies_are_compared_question_by_question_with_the_first(tmp_path: Path) -> None:
    single = StrategyRun(StrategyChoice("single", None),
                         tuple(outcome(i, i < 2) for i in range(8)), 2.0)
    sc8 = StrategyRun(StrategyChoice("sc8", "sc8"),
                      tuple(outcome(i, i != 0) for i in range(8)), 4.0)  # +6 won, 1 lost
    rows = [summarise("single", single.outcomes, 2.0),
            summarise("sc8", sc8.outcomes, 4.0, baseline=("single", single.outcomes))]
    assert (rows[1].baseline, rows[1].won, rows[1].lost) == ("single", 6, 1)
    assert rows[1].paired_p == pytest.approx(mcnemar_exact_p(6, 1))
    assert rows[0].baseline is None
    header, first, second = text_table(rows).splitlines()
    assert header.split()[-2:] == ["vs", "single"]
    assert first.rstrip().endswith("—") and second.rstrip().endswith("+6/−1 p=0.125")
    _, md_path = write_report(tmp_path, {"task": "t"}, [single, sc8], rows, plot=False)
    assert "| vs single |" in md_path.read_text()
    assert "| —" not in markdown_table(rows[:1])  # one strategy: no comparison column


def test_the_plain_request_is_the_baseline_wherever_its_row_is() -> None:
    """A --resume may put new strategies above `single`; they are still compared with it."""
    sc8 = StrategyRun(StrategyChoice("sc8", "sc8"), tuple(outcome(i, True) for i in range(3)), 3)
    single = StrategyRun(StrategyChoice("single", None),
                         tuple(outcome(i, i == 0) for i in range(3)), 1.0)
    rows = summarise_runs([sc8, single])
    assert [(r.strategy, r.baseline, r.won, r.lost) for r in rows] == [
        ("sc8", "single", 2, 0), ("single", None, None, None)]
    bon8 = StrategyRun(StrategyChoice("bon8", "bon8"), single.outcomes, 3.0)
    rows = summarise_runs([sc8, bon8])
    assert [r.baseline for r in rows] == [None, "sc8"]  # no plain request: the first row
