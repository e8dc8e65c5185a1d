"""Refinery's strategies against optillm 0.4.0 and its_hub 1.2.0, side by side on one engine.

    python benchmarks/peers.py --base-url http://localhost:8123 [--task reasoning_gym:gsm_symbolic
        --limit 40 --samples 8 --concurrency 16 --max-tokens 384 --temperature 0.7 --seed 7
        --paths LABEL,… --venv DIR --out DIR --out-png docs/peers.png]

One running Refinery server is the backend of everything: the peers proxy to its plain
`/v1/chat/completions` (each plain request there is one vLLM engine request), and Refinery's own
strategies run inside it. Same model, questions, sample budget N, max tokens, temperature and
client concurrency (questions in flight) for every path; the paths run one after another.

How each peer issues its calls (read from their code; DESIGN.md §5b):
- optillm `self_consistency` approach: 5 calls one after another per question (its sample count
  is fixed; N does not apply), each at temperature 1; truncated samples are dropped; the whole
  texts are clustered by string similarity and the largest cluster's text is returned.
- optillm `majority_voting` plugin: one call with `n=k` (k = N) at the request's temperature and
  max_tokens; votes on the normalised text after "Answer:" (else the whole text).
- optillm `bon` approach: one call with `n=N` at temperature 1, then N rating calls one after
  another (the model rates each sample 0–10 with the others' text in the prompt); the highest
  rating wins.
- its_hub `SelfConsistency` (its library, served by `benchmarks/peer_its_hub.py`): N parallel
  n=1 calls; votes on a regex capture of the answer line.

The peers run from their own virtualenv (`--venv`, made on first use with the pinned versions:
their dependencies must not leak into Refinery's environment). optillm declares ~40 runtime
dependencies (torch, gradio, spacy, …) that its proxy path does not import; only what its
`server.py` imports is installed beside it (`--no-deps`), which is enough to serve.

Per path: accuracy (95% bootstrap interval), questions/s, p50 latency, and — from the backend's
/metrics, whatever a peer reports — generated tokens, prompt tokens the engine computed (prompt
tokens − prefix-cache hits), engine requests and HTTP calls, all per question. The verdict is
Pareto: for each peer path, the Refinery paths that dominate it (accuracy ≥, generated tokens ≤,
questions/s ≥, one of them strictly).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from clients.evaluation.runner import StrategyChoice, evaluate, server_presets
from clients.evaluation.summary import StrategySummary, summarise
from clients.evaluation.tasks import Task, parse_task
from harness import parse_metric_values, save_figure
from tests.servers import ServerProcess, free_port, running, spawn

REPO = Path(__file__).resolve().parents[1]
OPTILLM, ITS_HUB = "optillm==0.4.0", "its_hub[lm]==1.2.0"
# What optillm 0.4.0's server.py (and the approaches it imports) needs to start and proxy.
OPTILLM_RUNTIME = ("flask", "openai", "cerebras_cloud_sdk", "numpy", "networkx",
                   "z3-solver<=4.15.4.0", "sympy", "aiohttp", "math-verify", "pyyaml")
# The answer line the reasoning tasks ask for ("Answer: <answer>"), as its_hub's vote reads it.
ANSWER_LINE = r"answer\s*[:：]\s*([^\n]+)"
ENGINE_METRICS = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total",
                  "vllm:prompt_tokens_cached_total", "vllm:request_success_total")


@dataclass(frozen=True)
class PeerPath:
    """One way of answering with N samples: who runs it and what the client sends."""

    label: str
    runner: str  # "refinery" | "optillm" | "its_hub"
    strategy: Mapping[str, Any] | None = None  # Refinery's `strategy` object
    approach: str | None = None  # optillm's approach, sent as the model-name prefix
    extra_body: Mapping[str, Any] = field(default_factory=dict)


def all_paths(samples: int, answer_format: str) -> list[PeerPath]:
    """Every path, peers interleaved with Refinery so that a drift hits both sides."""
    def strategy(name: str, **options: Any) -> dict[str, Any]:
        return {"name": name, **options, "answer_format": answer_format}

    n = samples
    return [
        PeerPath("refinery single", "refinery"),
        PeerPath(f"optillm majority_voting k={n}", "optillm", approach="majority_voting",
                 extra_body={"k": n}),
        PeerPath(f"refinery sc{n}", "refinery",
                 strategy("self_consistency", stop="fixed", max_samples=n)),
        PeerPath(f"its_hub sc{n}", "its_hub"),
        PeerPath(f"refinery esc≤{n}", "refinery",
                 strategy("self_consistency", stop="esc", max_samples=n, window=4)),
        PeerPath("optillm self_consistency (5)", "optillm", approach="self_consistency"),
        PeerPath(f"refinery bon{n}", "refinery",
                 strategy("best_of_n", n=n, selection="self_certainty")),
        PeerPath(f"optillm bon{n}", "optillm", approach="bon"),
    ]


def ensure_venv(venv: Path) -> Path:
    """The peers' virtualenv with the pinned optillm and its_hub; made once."""
    python = venv / "bin" / "python"
    marker = venv / "refinery-peers.json"
    wanted = {"optillm": OPTILLM, "its_hub": ITS_HUB, "runtime": list(OPTILLM_RUNTIME)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return python
    print(f"installing {OPTILLM} and {ITS_HUB} into {venv} …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, ITS_HUB], check=True)
    subprocess.run([*pip, "--no-deps", OPTILLM], check=True)
    subprocess.run([*pip, *OPTILLM_RUNTIME], check=True)
    subprocess.run([str(python), "-c", "import optillm.server, its_hub"], check=True)
    marker.write_text(json.dumps(wanted))
    return python


def start_optillm(python: Path, backend: str, samples: int, logs: Path) -> ServerProcess:
    port = free_port()
    command = [str(python.parent / "optillm"), "--base-url", f"{backend}/v1", "--host",
               "127.0.0.1", "--port", str(port), "--best-of-n", str(samples)]
    return spawn(command, logs / "optillm.log", port=port, ready_paths=("/health",),
                 env={"OPENAI_API_KEY": "sk-peers"})


def start_its_hub(python: Path, backend: str, samples: int, logs: Path) -> ServerProcess:
    port = free_port()
    command = [str(python), str(REPO / "benchmarks" / "peer_its_hub.py"), "--backend",
               f"{backend}/v1", "--port", str(port), "--budget", str(samples), "--regex",
               ANSWER_LINE]
    return spawn(command, logs / "its_hub.log", port=port, ready_paths=("/health",))


@dataclass(frozen=True)
class PathResult:
    path: PeerPath
    summary: StrategySummary
    generated_tokens_per_q: float
    prompt_tokens_computed_per_q: float
    engine_requests_per_q: float
    http_calls_per_q: float
    outcomes: list[dict[str, Any]]


def backend_counters(backend: str) -> dict[str, float]:
    with httpx.Client(base_url=backend, timeout=30) as client:
        text = client.get("/metrics").text
    return {**parse_metric_values(text, *ENGINE_METRICS),
            **parse_metric_values(text, "refinery_requests_total",
                                  where={"endpoint": "/v1/chat/completions"})}


def run_path(path: PeerPath, url: str, backend: str, model: str, task: Task,
             questions: Sequence[Any], args: argparse.Namespace) -> PathResult:
    """The questions through one path, with the backend's counters read around it."""
    before = backend_counters(backend)
    asked = f"{path.approach}-{model}" if path.approach else model
    (run,) = asyncio.run(evaluate(
        url, asked, task, questions, [StrategyChoice(path.label, path.strategy)],
        concurrency=args.concurrency, max_tokens=args.max_tokens,
        temperature=args.temperature, seed=args.seed, extra_body=path.extra_body,
        timeout_s=args.timeout))
    after = backend_counters(backend)
    delta = {name: after[name] - before[name] for name in after}
    count = len(questions)
    return PathResult(
        path, summarise(path.label, run.outcomes, run.wall_s, seed=args.seed),
        generated_tokens_per_q=delta["vllm:generation_tokens_total"] / count,
        prompt_tokens_computed_per_q=(delta["vllm:prompt_tokens_total"]
                                      - delta["vllm:prompt_tokens_cached_total"]) / count,
        engine_requests_per_q=delta["vllm:request_success_total"] / count,
        http_calls_per_q=delta["refinery_requests_total"] / count,
        outcomes=[asdict(o) for o in run.outcomes])


def dominates(ours: PathResult, peer: PathResult) -> bool:
    """Pareto dominance: at least as accurate, no more generated tokens, no fewer
    questions/s, and strictly better in one of them."""
    mine = (ours.summary.accuracy, -ours.generated_tokens_per_q, ours.summary.questions_per_s)
    theirs = (peer.summary.accuracy, -peer.generated_tokens_per_q,
              peer.summary.questions_per_s)
    return all(a >= b for a, b in zip(mine, theirs, strict=True)) and mine != theirs


def pareto(results: Sequence[PathResult]) -> dict[str, list[str]]:
    """For each peer path, the Refinery paths that dominate it."""
    ours = [r for r in results if r.path.runner == "refinery"]
    return {peer.path.label: [r.path.label for r in ours if dominates(r, peer)]
            for peer in results if peer.path.runner != "refinery"}


COLUMNS = ("path", "accuracy", "95% CI", "gen tok/q", "prompt tok computed/q", "engine req/q",
           "HTTP calls/q", "q/s", "p50 s", "errors")


def rows(results: Sequence[PathResult]) -> list[list[str]]:
    return [[r.path.label, f"{r.summary.accuracy:.3f}",
             f"{r.summary.ci_low:.2f}–{r.summary.ci_high:.2f}",
             f"{r.generated_tokens_per_q:.0f}", f"{r.prompt_tokens_computed_per_q:.0f}",
             f"{r.engine_requests_per_q:.1f}", f"{r.http_calls_per_q:.1f}",
             f"{r.summary.questions_per_s:.3f}", f"{r.summary.latency_p50_s:.1f}",
             str(r.summary.errors)] for r in results]


def markdown(results: Sequence[PathResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows(results)])


def plot(results: Sequence[PathResult], title: str, png: Path) -> None:
    """Accuracy against generated tokens and against questions/s; Refinery filled, peers
    hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    markers = "osD^v<>Px*"
    for n, r in enumerate(results):
        ours = r.path.runner == "refinery"
        error = [[r.summary.accuracy - r.summary.ci_low], [r.summary.ci_high - r.summary.accuracy]]
        for ax, x in zip(axes, (r.generated_tokens_per_q, r.summary.questions_per_s),
                         strict=True):
            ax.errorbar(x, r.summary.accuracy, yerr=error, fmt=markers[n % len(markers)],
                        capsize=3, markersize=8, label=r.path.label,
                        mfc=None if ours else "none", color=f"C{n % 10}")
    axes[0].set(xlabel="generated tokens per question (engine counters)",
                ylabel="accuracy (95% bootstrap interval)")
    axes[1].set(xlabel="questions per second")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.margins(x=0.15)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, png)


@contextlib.contextmanager
def peer_servers(python: Path, backend: str, samples: int, logs: Path,
                 runners: set[str]) -> Iterator[dict[str, str]]:
    """The peers' base URLs (only those some chosen path needs), stopped on exit."""
    urls = {"refinery": backend}
    with contextlib.ExitStack() as stack:
        if "optillm" in runners:
            urls["optillm"] = stack.enter_context(running(
                start_optillm(python, backend, samples, logs), timeout=120)).base_url
        if "its_hub" in runners:
            urls["its_hub"] = stack.enter_context(running(
                start_its_hub(python, backend, samples, logs), timeout=120)).base_url
        yield urls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the Refinery server (backend)")
    parser.add_argument("--model", help="default: the server's first model")
    parser.add_argument("--task", default="reasoning_gym:gsm_symbolic")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--samples", type=int, default=8, help="N, the sample budget")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--paths", help="comma list of path labels (default: all)")
    parser.add_argument("--venv", type=Path,
                        default=Path.home() / ".cache" / "refinery" / "peers-venv")
    parser.add_argument("--out", type=Path, help="default: eval-results/peers-<time>")
    parser.add_argument("--reuse", type=Path, metavar="RESULTS_JSON",
                        help="keep the paths an earlier run with the same settings measured "
                        "(its results.json) and run only the others")
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "peers.png")
    args = parser.parse_args()

    task = parse_task(args.task)
    paths = all_paths(args.samples, task.answer_format)
    if args.paths:
        wanted = [label.strip() for label in args.paths.split(",")]
        unknown = set(wanted) - {p.label for p in paths}
        if unknown:
            parser.error(f"unknown paths {sorted(unknown)}; known: {[p.label for p in paths]}")
        paths = [p for p in paths if p.label in wanted]
    backend = args.base_url.rstrip("/")
    served, _ = asyncio.run(server_presets(backend))
    model = args.model or served
    questions = task.questions(args.limit, args.seed)
    out = args.out or REPO / "eval-results" / f"peers-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(args.venv)

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    facts = {"command": shlex.join(["python", "benchmarks/peers.py", *sys.argv[1:]]),
             "date": datetime.date.today().isoformat(), "machine": machine, "model": model,
             "task": task.name, "questions": len(questions), "samples": args.samples,
             "concurrency": args.concurrency, "max_tokens": args.max_tokens,
             "temperature": args.temperature, "seed": args.seed,
             "peers": [OPTILLM, ITS_HUB]}
    results, source = reused(args.reuse, facts, paths) if args.reuse else ([], None)
    if source:
        facts["reused from"] = source
    done = {r.path.label for r in results}
    todo = [p for p in paths if p.label not in done]
    with peer_servers(python, backend, args.samples, out, {p.runner for p in todo}) as urls:
        for path in todo:
            print(f"== {path.label}", flush=True)
            results.append(run_path(path, urls[path.runner], backend, model, task, questions,
                                    args))
            print(markdown(results[-1:]).splitlines()[-1], flush=True)
            report(results, facts, out)  # after every path: a long run keeps what it measured
    order = [p.label for p in paths]
    results.sort(key=lambda r: order.index(r.path.label))
    print("\n" + report(results, facts, out))
    plot(results, f"{task.name} · {model} · N={args.samples} · {len(questions)} questions · "
         f"{facts['date']}", args.out_png)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {args.out_png}")


# Settings that must match for an earlier run's paths to stand beside this run's.
_SAME = ("model", "task", "questions", "samples", "concurrency", "max_tokens", "temperature",
         "seed", "peers")


def reused(results_json: Path, facts: Mapping[str, Any],
           paths: Sequence[PeerPath]) -> tuple[list[PathResult], str | None]:
    """The paths of an earlier run (`--reuse`) that this run would measure again, and the
    command that measured them (None when none is kept)."""
    data = json.loads(results_json.read_text())
    differ = [k for k in _SAME if data["settings"].get(k) != facts[k]]
    if differ:
        raise SystemExit(f"--reuse {results_json}: different settings {differ}")
    wanted = {p.label for p in paths}
    kept = []
    for item in data["paths"]:
        path = PeerPath(**item["path"])
        if path.label in wanted:
            kept.append(PathResult(
                path, StrategySummary(**item["summary"]), item["generated_tokens_per_q"],
                item["prompt_tokens_computed_per_q"], item["engine_requests_per_q"],
                item["http_calls_per_q"], item["outcomes"]))
    print(f"reusing {[r.path.label for r in kept]} from {results_json}", flush=True)
    return kept, (data["settings"]["command"] if kept else None)


def report(results: Sequence[PathResult], facts: Mapping[str, Any], out: Path) -> str:
    """Write results.json and results.md; returns the table with the Pareto verdict."""
    verdict = pareto(results)
    lines = [f"- {peer}: " + (", ".join(ours) if ours else "**no Refinery path dominates it**")
             for peer, ours in verdict.items()]
    text = (markdown(results) + "\n\nPareto: the Refinery paths that dominate each peer path "
            "(accuracy ≥, generated tokens ≤, questions/s ≥, one of them strictly):\n"
            + "\n".join(lines))
    (out / "results.json").write_text(json.dumps({
        "settings": dict(facts), "pareto": verdict,
        "paths": [{"path": asdict(r.path), "summary": r.summary.as_dict(),
                   "generated_tokens_per_q": r.generated_tokens_per_q,
                   "prompt_tokens_computed_per_q": r.prompt_tokens_computed_per_q,
                   "engine_requests_per_q": r.engine_requests_per_q,
                   "http_calls_per_q": r.http_calls_per_q, "outcomes": r.outcomes}
                  for r in results]}, indent=2, default=str))
    (out / "results.md").write_text("\n".join(f"- {k}: `{v}`" for k, v in facts.items())
                                    + "\n\n" + text + "\n")
    return text

if __name__ == "__main__":
    main()
