"""What `refinery eval` leaves behind: a table on stdout, `results.json` (settings, summaries,
every question's outcome), `results.md` (the table with the command that made it) and
`accuracy_vs_tokens.png` (one point per strategy with its 95% interval). `read_runs` reads a
results.json back, so that an interrupted or extended evaluation keeps what it measured."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clients.evaluation.runner import StrategyChoice, StrategyRun
from clients.evaluation.summary import Outcome, StrategySummary, summarise

__all__ = ["draw_accuracy_vs_tokens", "markdown_table", "paired_text", "plot_accuracy_vs_tokens",
           "read_runs", "summarise_runs", "text_table", "write_report"]

_COLUMNS = ("strategy", "accuracy", "95% CI", "tokens/q", "sub-req/q", "p50 s", "p95 s", "q/s",
            "errors")


def _columns(rows: Sequence[StrategySummary]) -> list[str]:
    """The fixed columns, then one for the paired comparison if any row has a baseline."""
    baselines = [row.baseline for row in rows if row.baseline is not None]
    return [*_COLUMNS, f"vs {baselines[0]}"] if baselines else list(_COLUMNS)


def paired_text(row: StrategySummary) -> str | None:
    """`+19/−3 p=0.001`: questions won and lost against the baseline, exact McNemar p; None
    for the baseline itself."""
    if row.baseline is None or row.won is None or row.lost is None or row.paired_p is None:
        return None
    p = "p<0.001" if row.paired_p < 0.001 else f"p={row.paired_p:.3f}"
    return f"+{row.won}/−{row.lost} {p}"


def _cells(row: StrategySummary, columns: int) -> list[str]:
    cells = [row.strategy, f"{row.accuracy:.3f}", f"{row.ci_low:.2f}–{row.ci_high:.2f}",
             f"{row.completion_tokens_per_question:.0f}", f"{row.sub_requests_per_question:.1f}",
             f"{row.latency_p50_s:.2f}", f"{row.latency_p95_s:.2f}",
             f"{row.questions_per_s:.3f}", str(row.errors), paired_text(row) or "—"]
    return cells[:columns]


def summarise_runs(runs: Sequence[StrategyRun], seed: int = 0) -> list[StrategySummary]:
    """Each run's numbers, every strategy compared with the plain request (`single`) when the
    runs have one — so the baseline stays put however a --resume orders the rows — else with
    the first run."""
    base = next((run for run in runs if run.choice.spec is None), runs[0]) if runs else None
    return [summarise(run.choice.label, run.outcomes, run.wall_s, seed=seed,
                      baseline=None if base is None or run is base
                      else (base.choice.label, base.outcomes))
            for run in runs]


def text_table(rows: Sequence[StrategySummary]) -> str:
    """Aligned columns for a terminal."""
    columns = _columns(rows)
    grid = [columns, *(_cells(r, len(columns)) for r in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
                     for line in grid)


def markdown_table(rows: Sequence[StrategySummary]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    lines += ["| " + " | ".join(_cells(r, len(columns))) + " |" for r in rows]
    return "\n".join(lines)


def draw_accuracy_vs_tokens(ax: Any, rows: Sequence[StrategySummary], title: str,
                            slots: Mapping[str, int] | None = None) -> None:
    """Accuracy against generated tokens per question on `ax`, with the bootstrap interval as
    error bars: the further up and left, the better. `slots` fixes each strategy's marker and
    colour (several panels then draw one strategy alike); by default, the row's position."""
    markers = "osD^v<>Px*hH"
    for n, row in enumerate(rows):
        slot = slots[row.strategy] if slots is not None else n
        low = 0.0 if math.isnan(row.ci_low) else row.accuracy - row.ci_low
        high = 0.0 if math.isnan(row.ci_high) else row.ci_high - row.accuracy
        ax.errorbar(row.completion_tokens_per_question, row.accuracy, yerr=[[low], [high]],
                    fmt=markers[slot % len(markers)], color=f"C{slot % 10}", capsize=4,
                    markersize=7, label=row.strategy)
    ax.set_xlabel("generated tokens per question")
    ax.set_ylabel("accuracy (95% bootstrap interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.margins(x=0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)


def plot_accuracy_vs_tokens(rows: Sequence[StrategySummary], title: str, png: Path) -> None:
    """`draw_accuracy_vs_tokens` as a PNG of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    draw_accuracy_vs_tokens(ax, rows, title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _sittings_note(runs: Sequence[StrategyRun]) -> str:
    """A line naming the passes finished over several sittings: their q/s divides by the
    summed wall time, which includes work on the questions in flight when a sitting stopped
    (those were asked again), so it reads a little low."""
    resumed = [f"{run.choice.label} ({run.sittings})" for run in runs if run.sittings > 1]
    if not resumed:
        return ""
    return ("\nPasses finished over several sittings: " + ", ".join(resumed) + ". Their q/s "
            "counts the work lost on the questions in flight when a sitting stopped.\n")


def _throttle_note(runs: Sequence[StrategyRun]) -> str:
    """A line naming the passes the server slowed with 429s (admission control: the eval's
    concurrency × the strategy's sample budget exceeded the server's bound). Their waits are in
    the latencies and q/s: that is the pace the server allowed, not the strategy's cost alone."""
    slowed = [(run.choice.label, sum(o.throttled > 0 for o in run.outcomes),
               sum(o.throttled for o in run.outcomes)) for run in runs]
    named = [f"{label} ({questions} questions, {refusals} refusals)"
             for label, questions, refusals in slowed if refusals]
    if not named:
        return ""
    return ("\nPasses the server throttled (429 at capacity, asked again after Retry-After): "
            + ", ".join(named) + ". Their latencies and q/s include the waits.\n")


def write_report(out_dir: Path, settings: Mapping[str, Any], runs: Sequence[StrategyRun],
                 summaries: Sequence[StrategySummary], *, plot: bool = True) -> list[Path]:
    """Write results.json, results.md and (with `plot`) accuracy_vs_tokens.png; returns their
    paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "settings": dict(settings),
        "summaries": [s.as_dict() for s in summaries],
        "runs": [{"strategy": run.choice.label, "spec": run.choice.spec, "wall_s": run.wall_s,
                  "sittings": run.sittings, "outcomes": [asdict(o) for o in run.outcomes]}
                 for run in runs],
    }
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(data, indent=2, default=str))
    facts = "\n".join(f"- {key}: `{value}`" for key, value in settings.items())
    md_path = out_dir / "results.md"
    md_path.write_text(f"# refinery eval: {settings.get('task', '')}\n\n{facts}\n\n"
                       f"{markdown_table(summaries)}\n{_sittings_note(runs)}{_throttle_note(runs)}")
    paths = [json_path, md_path]
    if plot:
        png = out_dir / "accuracy_vs_tokens.png"
        title = f"{settings.get('task', '')} · {settings.get('model', '')}"
        plot_accuracy_vs_tokens(summaries, title, png)
        paths.append(png)
    return paths


def read_runs(json_path: Path) -> tuple[dict[str, Any], list[StrategyRun]]:
    """(settings, runs) of a results.json `write_report` wrote; ValueError naming the file if
    it is not one."""
    try:
        data = json.loads(json_path.read_text())
        runs = [StrategyRun(StrategyChoice(run["strategy"], run["spec"]),
                            tuple(Outcome(**outcome) for outcome in run["outcomes"]),
                            float(run["wall_s"]), int(run.get("sittings", 1)))
                for run in data["runs"]]
        return dict(data["settings"]), runs
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{json_path} is not a refinery eval results.json ({exc!r})") from exc
