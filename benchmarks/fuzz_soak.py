"""Fuzz soak: thousands of schemathesis cases against a live `refinery serve`, outside CI.

The CI test (tests/e2e/test_fuzz.py) sends a few dozen cases per operation; this sends
`--cases` (10,000 by default) to both generation endpoints, 35% each in positive mode and 15%
each in negative mode (negative cases are cheap to send but slow to draw), bounded the same way
(tests/e2e/fuzzing.py: at most 4 tokens, n <= 2), `--concurrency` at a time while the next ones
are drawn, for at most `--minutes`. Every answer gets the CI checks: no 5xx, status, content type
and body as /openapi.json says, every error OpenAI-shaped. Nothing stops at a failure: each is
counted, and the first case of each kind is kept as evidence. Writes a status-code table
(Markdown, on stdout and into `--json`) and a figure (status codes per operation and mode;
cases answered per second).

    .venv/bin/python benchmarks/fuzz_soak.py --cases 10000 --png docs/fuzz_soak.png
    .venv/bin/python benchmarks/fuzz_soak.py --base-url http://127.0.0.1:8000 --cases 500

Without --base-url it starts `refinery serve` on the embedded model itself (and stops it).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import save_figure  # first: it puts the repository root on sys.path
from tests.e2e.fuzzing import CHECKS, GENERATION_PATHS, bounded_cases, load_schema
from tests.servers import running, start_refinery

SERVED_MODEL = "smollm2"
MODES = ("positive", "negative")
REQUEST_TIMEOUT_S = 120.0
_CHUNK = 250  # cases drawn from one stream before the next stream's turn


@dataclass
class Tally:
    """What one (operation, mode) stream of cases produced."""

    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # summed over cases: the latency, not the wall time
    transport_errors: int = 0
    generator_errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def merge(self, other: Tally, seconds: float) -> None:
        self.statuses.update(other.statuses)
        self.failures.update(other.failures)
        for title, example in other.examples.items():
            self.examples.setdefault(title, example)
        self.transport_errors += other.transport_errors
        self.seconds += seconds

    @property
    def cases(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors


def _failure_titles(exc: BaseException) -> list[str]:
    inner = getattr(exc, "exceptions", None)
    if inner:
        return [title for e in inner for title in _failure_titles(e)]
    return [str(getattr(exc, "title", None) or type(exc).__name__)]


class _TimeUp(Exception):
    """Raised out of the generator once the soak's time is spent."""


def _generate(schema: Any, path: str, mode: str, count: int, seed: int,
              deliver: Callable[[Any], None], deadline: float) -> None:
    """Draw up to `count` bounded cases of one operation and mode (Hypothesis, `seed`) and
    hand each to `deliver` as it is drawn; stops early at `deadline` (time.monotonic())."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from schemathesis import GenerationMode

    @hypothesis_seed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
              print_blob=False)
    @given(case=bounded_cases(schema[path]["POST"], GenerationMode(mode), SERVED_MODEL))
    def collect(case: Any) -> None:
        if time.monotonic() > deadline:
            raise _TimeUp
        deliver(case)

    with suppress(_TimeUp):
        collect()


def _generate_all(schema: Any, path: str, mode: str, count: int, seed: int,
                  deliver: Callable[[Any], None], deadline: float, tally: Tally) -> None:
    """`_generate` until `count` cases are delivered or time is up. Should schemathesis
    itself fail while drawing a case (as 4.32.5 did on `format: binary`, which `load_schema`
    now drops), the error is counted as the generator's, not the server's, and drawing goes
    on with the next seed."""
    delivered = 0

    def counted(case: Any) -> None:
        nonlocal delivered
        delivered += 1
        deliver(case)

    attempt = 0
    while delivered < count and time.monotonic() < deadline:
        try:
            _generate(schema, path, mode, count - delivered, seed + 1000 * attempt, counted,
                      deadline)
            return
        except Exception as exc:  # noqa: BLE001  the generator's own failure
            title = f"generator: {type(exc).__name__}: {str(exc)[:80]}"
            tally.generator_errors[title] += 1
            attempt += 1


def _send(case: Any, base_url: str, tally: Tally) -> None:
    """One case: its status, and every check it fails (counted, the first kept as evidence)."""
    import requests

    try:
        response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
    except requests.RequestException as exc:
        title = f"transport: {type(exc).__name__}"
        tally.transport_errors += 1
        tally.failures[title] += 1
        tally.examples.setdefault(title, case.as_curl_command()[:2000])
        return
    tally.statuses[response.status_code] += 1
    try:
        case.validate_response(response, checks=CHECKS)
    except Exception as exc:  # noqa: BLE001  every failure is counted, none stops the soak
        for title in _failure_titles(exc):
            tally.failures[title] += 1
            tally.examples.setdefault(
                title, f"{case.as_curl_command()[:2000]}\n-> {response.status_code} "
                f"{response.content[:500]!r}")


def _markdown(tallies: dict[tuple[str, str], Tally]) -> str:
    statuses = sorted({s for t in tallies.values() for s in t.statuses})
    head = ["operation", "mode", "cases", *map(str, statuses), "5xx", "check failures",
            "mean latency (ms)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (path, mode), tally in tallies.items():
        server_errors = sum(n for s, n in tally.statuses.items() if s >= 500)
        row = [f"POST {path}", mode, str(tally.cases),
               *(str(tally.statuses.get(s, 0)) for s in statuses), str(server_errors),
               str(sum(tally.failures.values())),
               f"{1000 * tally.seconds / tally.cases:.0f}" if tally.cases else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _plot(tallies: dict[tuple[str, str], Tally], timeline: list[float], png: Path,
          concurrency: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    statuses = sorted({s for t in tallies.values() for s in t.statuses})
    labels = [f"{path.removeprefix('/v1/')}\n{mode}" for path, mode in tallies]
    fig, (bars, rate) = plt.subplots(1, 2, figsize=(12, 4.5),
                                     gridspec_kw={"width_ratios": [3, 2]})
    bottom = [0] * len(tallies)
    cmap = plt.get_cmap("tab10")
    for i, status in enumerate(statuses):
        heights = [t.statuses.get(status, 0) for t in tallies.values()]
        color = "tab:red" if status >= 500 else cmap(i % 10)
        bars.bar(labels, heights, bottom=bottom, label=str(status), color=color)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    bars.set_ylabel("cases")
    bars.set_title("Status codes of fuzzed requests")
    bars.legend(title="status", fontsize=8)
    per_window: collections.Counter[int] = collections.Counter(int(t // 10) for t in timeline)
    windows = range(max(per_window) + 1) if per_window else range(0)
    rate.plot([w * 10 / 60 for w in windows], [per_window[w] / 10 for w in windows])
    rate.set_xlabel("minutes")
    rate.set_ylabel("cases/s (10 s windows)")
    rate.set_title(f"Cases answered per second ({concurrency} in flight)")
    fig.suptitle(f"Fuzz soak: {sum(t.cases for t in tallies.values())} schemathesis cases, "
                 "embedded SmolLM2, vLLM-CPU")
    save_figure(fig, png)


@contextmanager
def _server(base_url: str | None, logs: Path) -> Iterator[str]:
    if base_url is not None:
        yield base_url
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logs.mkdir(parents=True, exist_ok=True)
    with running(start_refinery(logs, name="fuzz-soak")) as live:
        yield live.base_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="total cases (all streams)")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--concurrency", type=int, default=8,
                        help="cases in flight at once (the engine batches them)")
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="stop drawing new cases after this long")
    parser.add_argument("--base-url", default=None, help="a running server (else one starts)")
    parser.add_argument("--png", type=Path, default=Path("docs/fuzz_soak.png"))
    parser.add_argument("--json", type=Path, default=None, help="write the tallies here")
    parser.add_argument("--logs", type=Path, default=Path("/tmp/refinery-fuzz-soak"))
    args = parser.parse_args(argv)

    from tqdm import tqdm

    streams = [(path, mode) for path in GENERATION_PATHS for mode in MODES]
    # Negative cases cost little to send but much to draw: fewer of them.
    share = {"positive": 0.35, "negative": 0.15}
    counts = {(path, mode): max(1, round(args.cases * share[mode])) for path, mode in streams}
    tallies = {stream: Tally() for stream in streams}
    timeline: list[float] = []  # seconds from the start at which each case finished
    with _server(args.base_url, args.logs) as base_url:
        schema = load_schema(base_url)
        deadline = time.monotonic() + args.minutes * 60
        lock = threading.Lock()
        # Generation (CPU, here) overlaps sending (the server); at most this many cases wait.
        room = threading.BoundedSemaphore(args.concurrency * 4)
        started = time.perf_counter()
        with tqdm(total=sum(counts.values()), unit="case", desc="fuzz") as progress, \
                ThreadPoolExecutor(args.concurrency) as pool:
            def one(stream: tuple[str, str], case: Any) -> None:
                tally = Tally()
                case_started = time.perf_counter()
                try:
                    _send(case, base_url, tally)
                finally:
                    room.release()
                with lock:
                    tallies[stream].merge(tally, time.perf_counter() - case_started)
                    timeline.append(time.perf_counter() - started)
                    progress.update()

            # Round-robin chunks, so that every stream gets its share before time is up.
            drawn = dict.fromkeys(streams, 0)
            for chunk in itertools.count():
                left = [stream for stream in streams if drawn[stream] < counts[stream]]
                if not left or time.monotonic() > deadline:
                    break
                for i, stream in enumerate(left):
                    size = min(_CHUNK, counts[stream] - drawn[stream])

                    def deliver(case: Any, stream: tuple[str, str] = stream) -> None:
                        room.acquire()
                        pool.submit(one, stream, case)

                    _generate_all(schema, *stream, size, args.seed + 100 * chunk + i, deliver,
                                  deadline, tallies[stream])
                    drawn[stream] += size
        wall_s = time.perf_counter() - started
    cases = sum(t.cases for t in tallies.values())
    table = _markdown(tallies)
    summary = (f"{cases} cases in {wall_s / 60:.1f} min ({cases / wall_s:.1f} cases/s, "
               f"{args.concurrency} in flight)")
    print(table, summary, sep="\n\n")
    for (path, mode), tally in tallies.items():
        for title, count in tally.failures.most_common():
            print(f"\n{path} {mode}: {count} x {title}\n{tally.examples[title]}")
        for title, count in tally.generator_errors.items():
            print(f"\n{path} {mode}: {count} x {title} (schemathesis, not the server)")
    _plot(tallies, timeline, args.png, args.concurrency)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "table": table,
            "summary": summary,
            "streams": {f"{p} {m}": {"statuses": dict(t.statuses), "failures": dict(t.failures),
                                     "generator_errors": dict(t.generator_errors),
                                     "examples": t.examples, "seconds": t.seconds}
                        for (p, m), t in tallies.items()},
        }, indent=1, default=str))
    failures = sum(sum(t.failures.values()) for t in tallies.values())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
