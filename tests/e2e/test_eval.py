"""`refinery eval` end to end on the embedded model, and a model cache that cannot be written
stopping `refinery serve` with the path named.

The eval run is kept tiny (3 questions × 2 strategies, 24 tokens each) against the session
server; it checks the plumbing (requests, usage, sub-requests, judging, files), not accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clients.evaluation.checkpoint import read_pass, write_pass
from clients.evaluation.report import read_runs
from clients.evaluation.runner import PassSoFar, StrategyChoice
from tests.servers import ServerProcess, free_port, refinery_command

TASK = "reasoning_gym:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"


def eval_command(server: ServerProcess, out: Path, strategies: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", "eval", "--base-url", server.base_url,
            "--task", TASK, "--strategies", strategies, "--limit", "3", "--max-tokens", "24",
            "--concurrency", "3", "--seed", "7", "--out", str(out), "--quiet", *extra]


def test_refinery_eval_reports_every_strategy_on_the_embedded_model(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A first run measures `single`; `--resume` keeps it (the very same outcomes, latencies
    included) and adds sc8, so one table grows over two sittings."""
    out = tmp_path / "eval"
    first = subprocess.run(eval_command(server, out, "single"),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    single_before = json.loads((out / "results.json").read_text())["runs"][0]
    result = subprocess.run(eval_command(server, out, "single,sc8", "--resume"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].split()[:2] == ["strategy", "accuracy"]
    data = json.loads((out / "results.json").read_text())
    assert data["runs"][0] == single_before
    assert data["settings"]["earlier_commands"][0].endswith("--strategies single --limit 3 "
                                                            "--max-tokens 24 --concurrency 3 "
                                                            f"--seed 7 --out {out} --quiet")
    summaries = {s["strategy"]: s for s in data["summaries"]}
    assert list(summaries) == ["single", "sc8"]
    assert all(s["questions"] == 3 and s["errors"] == 0 for s in summaries.values())
    assert summaries["single"]["sub_requests_per_question"] == 1
    assert summaries["sc8"]["sub_requests_per_question"] == 8  # fixed stop: all 8 drawn
    assert 0 < summaries["single"]["completion_tokens_per_question"] <= 24
    assert summaries["sc8"]["completion_tokens_per_question"] > 24  # eight samples' worth
    assert data["runs"][1]["spec"]["answer_format"] == "auto"  # what the judge reads
    reports = [o["strategy_report"] for o in data["runs"][1]["outcomes"]]
    assert all(r["name"] == "self_consistency" and r["samples"] == 8
               and r["usage"]["sub_requests"] == 8 for r in reports)
    assert all(o["strategy_report"] is None for o in data["runs"][0]["outcomes"])
    assert data["settings"]["model"] == "smollm2"
    assert (out / "results.md").read_text().count("\n| ") >= 3
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 1000

    relabelled = subprocess.run(
        eval_command(server, out, 'sc8={"name":"self_consistency","max_samples":4}', "--resume"),
        capture_output=True, text=True, timeout=300)
    assert relabelled.returncode == 2
    assert "'sc8' was measured as" in relabelled.stderr and "another label" in relabelled.stderr


def test_resume_finishes_a_half_done_pass_asking_only_what_it_lacks(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A pass of `again` (plain requests, like `single`) that an earlier sitting left after
    two of three questions: `--resume` asks only the third, keeps the two outcomes as they
    were (latencies included), adds the sittings' wall times and removes partial.json."""
    out = tmp_path / "eval"
    first = subprocess.run(eval_command(server, out, "single"),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    settings, (single,) = read_runs(out / "results.json")
    facts = {key: settings[key] for key in ("task", "questions", "seed", "concurrency",
                                            "max_tokens", "temperature", "model")}
    again = StrategyChoice("again", None)
    write_pass(out, facts, PassSoFar(again, dict(enumerate(single.outcomes[:2])), 70.0, 1))
    result = subprocess.run(eval_command(server, out, "single,again=single", "--resume"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _, (kept, finished) = read_runs(out / "results.json")
    assert kept == single
    assert finished.choice == again and finished.sittings == 2 and finished.wall_s > 70.0
    assert finished.outcomes[:2] == single.outcomes[:2]
    assert finished.outcomes[2].question_id == single.outcomes[2].question_id
    assert finished.outcomes[2].latency_s != single.outcomes[2].latency_s  # asked again
    assert finished.outcomes[2].completion_tokens > 0
    assert read_pass(out) is None
    assert "several sittings: again (2)" in (out / "results.md").read_text()


def test_refinery_eval_names_an_unknown_strategy(server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "eval", "--base-url", server.base_url,
         "--task", TASK, "--strategies", "single,sc999", "--limit", "1", "--quiet",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "unknown strategy 'sc999'" in result.stderr


def test_an_unwritable_model_cache_stops_the_server_naming_the_path(tmp_path: Path) -> None:
    """The cache path lies under a regular file, which no user (root included) can make a
    directory of; the server exits non-zero before any engine starts."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    cache = blocker / "cache"
    result = subprocess.run(
        refinery_command(free_port()), capture_output=True, text=True, timeout=300,
        env={**os.environ, "REFINERY_CACHE": str(cache)},
    )
    assert result.returncode != 0
    assert f"cannot write the model cache {cache}" in result.stderr
    assert "REFINERY_CACHE" in result.stderr
