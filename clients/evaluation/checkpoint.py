"""A strategy's pass in progress, kept in `--out/partial.json` after every answered question.

A pass of 100 questions under a best-of-8 strategy is an hour on 2 CPUs; without this file an
interrupt (a closed laptop, the end of a sitting) threw all of it away. The file is replaced
atomically (a reader never sees half of it), names the settings it was measured under so a
`--resume` can refuse to mix runs, and is removed once the pass is in results.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clients.evaluation.runner import PassSoFar, StrategyChoice
from clients.evaluation.summary import Outcome

__all__ = ["PARTIAL_FILE", "drop_pass", "read_pass", "write_pass"]

PARTIAL_FILE = "partial.json"


def write_pass(out_dir: Path, settings: Mapping[str, Any], so_far: PassSoFar) -> None:
    """Replace `out_dir/partial.json` with `so_far` and the settings it runs under."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"settings": dict(settings), "strategy": so_far.choice.label,
            "spec": so_far.choice.spec, "wall_s": so_far.wall_s, "sittings": so_far.sittings,
            "outcomes": {str(index): asdict(outcome)
                         for index, outcome in sorted(so_far.outcomes.items())}}
    path = out_dir / PARTIAL_FILE
    staging = path.with_name(f".{PARTIAL_FILE}.{os.getpid()}")
    staging.write_text(json.dumps(data, default=str))
    os.replace(staging, path)


def read_pass(out_dir: Path) -> tuple[dict[str, Any], PassSoFar] | None:
    """(settings, the pass so far) from `out_dir/partial.json`, None when there is none;
    ValueError naming the file if it is not one `write_pass` wrote."""
    path = out_dir / PARTIAL_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        outcomes = {int(index): Outcome(**outcome)
                    for index, outcome in data["outcomes"].items()}
        so_far = PassSoFar(StrategyChoice(data["strategy"], data["spec"]), outcomes,
                           float(data["wall_s"]), int(data["sittings"]))
        return dict(data["settings"]), so_far
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a refinery eval partial.json ({exc!r}); "
                         "delete it to start that pass afresh") from exc


def drop_pass(out_dir: Path) -> None:
    """Remove `out_dir/partial.json` (its pass is finished, or is to be run afresh)."""
    (out_dir / PARTIAL_FILE).unlink(missing_ok=True)
