"""The strategy grid of docs/evaluation.md: several `refinery eval` runs of one model, one per
task, read back from their results.json and shown side by side — a Markdown table with the
strategies as rows and the tasks as columns, and one accuracy-vs-tokens panel per task.

    python benchmarks/eval_grid.py RUN_DIR [RUN_DIR ...] [--png docs/eval_grid_qwen.png]

Nothing is measured here: every number comes from the runs' own files (each cell the same
summary `refinery eval` printed, the paired comparison against `single` included), so the
grid can be redrawn whenever a `--resume` adds a strategy to one of the runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clients.evaluation.report import (
    draw_accuracy_vs_tokens,
    paired_text,
    read_runs,
    summarise_runs,
)
from clients.evaluation.summary import StrategySummary

REPO = Path(__file__).resolve().parents[1]


def _cell(row: StrategySummary | None) -> str:
    """`0.560 · 1,665 tok · +23/−2 p<0.001`; a dash where the task lacks the strategy."""
    if row is None:
        return "—"
    paired = paired_text(row)
    return " · ".join([f"{row.accuracy:.3f}", f"{row.completion_tokens_per_question:,.0f} tok",
                       *([paired] if paired else [])])


def strategy_order(tasks: Sequence[tuple[str, Sequence[StrategySummary]]]) -> list[str]:
    """Every strategy once: the baseline first, then in the order they first appear."""
    order: list[str] = []
    for _, rows in tasks:
        for row in sorted(rows, key=lambda row: row.baseline is not None):
            order += [row.strategy] if row.strategy not in order else []
    return order


def grid_table(tasks: Sequence[tuple[str, Sequence[StrategySummary]]]) -> str:
    """Strategies as rows, tasks as columns."""
    order = strategy_order(tasks)
    lookup = [{row.strategy: row for row in rows} for _, rows in tasks]
    lines = ["| strategy | " + " | ".join(f"`{name}`" for name, _ in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    lines += [f"| {label} | " + " | ".join(_cell(rows.get(label)) for rows in lookup) + " |"
              for label in order]
    return "\n".join(lines)


def draw_grid(tasks: Sequence[tuple[str, Sequence[StrategySummary]]], model: str,
              footer: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = strategy_order(tasks)
    slots = {label: n for n, label in enumerate(order)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 5.0), squeeze=False)
    for ax, (name, rows) in zip(axes[0], tasks, strict=True):
        ordered = sorted(rows, key=lambda row: slots[row.strategy])
        draw_accuracy_vs_tokens(ax, ordered, f"{name} · {model}", slots)
    fig.text(0.005, 0.005, footer, fontsize=6, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the footer
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="refinery eval --out folders")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "eval_grid_qwen.png")
    args = parser.parse_args(argv)
    tasks: list[tuple[str, list[StrategySummary]]] = []
    facts: list[dict[str, Any]] = []
    for folder in args.runs:
        settings, runs = read_runs(folder / "results.json")
        tasks.append((str(settings["task"]).removeprefix("reasoning_gym:"),
                      summarise_runs(runs, int(settings.get("seed", 0)))))
        facts.append(settings)
    models = {str(settings.get("model")) for settings in facts}
    if len(models) != 1:
        parser.error(f"the runs were measured on different models: {sorted(models)}")
    model = models.pop()
    dates = sorted({str(s["date"]) for s in facts if s.get("date")})
    command = shlex.join(["python", "benchmarks/eval_grid.py", *argv])
    print(f"# refinery eval grid · {model}\n\n{grid_table(tasks)}\n")
    print("Each cell: accuracy · generated tokens per question · questions won/lost against "
          "`single` (exact McNemar p).")
    first = facts[0]
    settings_line = (f"{first['questions']} questions, seed {first['seed']}, concurrency "
                     f"{first['concurrency']}, max_tokens {first['max_tokens']}")
    footer = (f"{command}\nruns {', '.join(dates)} ({settings_line}); model {model}; "
              f"machine {platform.machine()} {os.cpu_count()} CPUs; "
              f"drawn {datetime.date.today().isoformat()}")
    draw_grid(tasks, model, footer, args.png)
    print(f"\nwrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
