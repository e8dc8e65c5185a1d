"""What every benchmark script does the same way: split its own arguments from the engine's,
build the offline vLLM engine `refinery serve` would build, load seeded reasoning-gym
questions, send them through a live server at a fixed concurrency, and save a plot."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "Question",
    "load_questions",
    "offline_llm",
    "metric_values",
    "parse_metric_values",
    "run_questions",
    "save_figure",
    "server_cpu_seconds",
    "server_rss_mib",
    "scatter_plot",
    "served_model",
    "spawn_refinery",
    "split_engine_flags",
    "task_parser",
]

T = TypeVar("T")

# Scripts see only benchmarks/ on sys.path; the root adds tests.servers (kept out of the wheel).
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

# The engine arguments that change what an offline `LLM` computes and how fast.
_OFFLINE_FIELDS = ("model", "enforce_eager", "enable_prefix_caching", "enable_chunked_prefill",
                   "max_model_len", "block_size", "dtype")


def split_engine_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`[script options] [-- engine flags]` → (script options, engine flags)."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    return argv[:cut], argv[cut + 1:]


def offline_llm(model: Path, engine_flags: Sequence[str]) -> Any:
    """vLLM's offline `LLM` with exactly the engine arguments `refinery serve` resolves."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    from server.cli import resolve_serve_args

    _, serve_args = resolve_serve_args([str(model), *engine_flags])
    engine_args = EngineArgs.from_cli_args(serve_args)
    return LLM(**{f: getattr(engine_args, f) for f in _OFFLINE_FIELDS
                  if getattr(engine_args, f, None) is not None})


def server_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds so far of a server's API process and of all its engine processes."""
    import psutil

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    api = psutil.Process(pid)
    return used(api), sum(used(child) for child in api.children(recursive=True))


def server_rss_mib(pid: int) -> float:
    """Resident memory of a server: its API process and every engine process."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (root, *root.children(recursive=True))) / 2**20


def metric_values(client: Any, *names: str,
                  where: Mapping[str, str] | None = None) -> dict[str, float]:
    """The current value of each named sample of a server's /metrics (summed over the samples
    whose labels include `where`); `client` is an httpx.Client on the server's base URL."""
    return parse_metric_values(client.get("/metrics").text, *names, where=where)


def parse_metric_values(text: str, *names: str,
                        where: Mapping[str, str] | None = None) -> dict[str, float]:
    """`metric_values` of an exposition already fetched: one scrape read with several filters
    sees one instant."""
    from prometheus_client.parser import text_string_to_metric_families

    values = dict.fromkeys(names, 0.0)
    wanted = dict(where or {}).items()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values and wanted <= sample.labels.items():
                values[sample.name] += sample.value
    return values


def prefix_cache_counters(base_url: str) -> tuple[float, float]:
    """(prompt tokens found in vLLM's prefix cache, prompt tokens looked up) so far, from a
    server's /metrics: their difference is what the engine prefilled."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=30) as client:
        values = metric_values(client, "vllm:prefix_cache_hits_total",
                               "vllm:prefix_cache_queries_total")
    return values["vllm:prefix_cache_hits_total"], values["vllm:prefix_cache_queries_total"]


def save_figure(fig: Any, png: Path) -> None:
    """Write a matplotlib figure as the benchmark's PNG and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class Question:
    """A seeded task question: its samples use seeds `seed`, `seed + 1`, … (64 apart)."""

    index: int
    prompt: str
    gold: str
    seed: int


def load_questions(task: str, count: int, seed: int, suffix: str,
                   options: Mapping[str, Mapping[str, Any]]) -> list[Question]:
    """`count` reasoning-gym questions of `task` (procedural, seeded: no download), each
    followed by `suffix`; `options` holds the dataset arguments per task."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=count, seed=seed, **options.get(task, {}))
    return [Question(i, entry["question"] + suffix, str(entry["answer"]), seed * 100_000 + i * 64)
            for i, entry in enumerate(dataset)]


def served_model(folder: Path | None) -> Path:
    """The model folder to serve: the one given, else the embedded model (converted once)."""
    if folder is not None:
        return folder
    from server.embedded_model import ensure_embedded_model
    from server.settings import Settings

    return ensure_embedded_model(Settings().cache_dir)


async def run_questions(base_url: str, questions: Sequence[Question],
                        ask: Callable[[Any, Question], Awaitable[T]], concurrency: int,
                        label: str) -> list[T]:
    """`ask(client, question)` for every question, `concurrency` at a time, with a progress
    bar; results in question order."""
    import httpx
    from tqdm import tqdm

    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=1800) as client:
        with tqdm(total=len(questions), desc=label, unit="q") as bar:
            async def one(question: Question) -> T:
                async with gate:
                    result = await ask(client, question)
                bar.update()
                return result

            return list(await asyncio.gather(*(one(q) for q in questions)))


def scatter_plot(rows: Sequence[Mapping[str, Any]], x: str, y: str, title: str, xlabel: str,
                 ylabel: str, png: Path, y_scale: float = 1.0) -> None:
    """One marker per row (`row["config"]` in the legend) at (row[x], row[y] × y_scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = "osD^v<>Px*"
    for n, row in enumerate(rows):
        ax.scatter(row[x], row[y] * y_scale, s=50, marker=markers[n % len(markers)],
                   label=row["config"])
    ax.legend(fontsize=8, loc="best")
    ax.margins(x=0.15, y=0.2)
    ax.set_title(title, fontsize=10)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    save_figure(fig, png)


def task_parser(description: str, *, questions: int, max_tokens: int,
                png: Path) -> argparse.ArgumentParser:
    """The options every task benchmark takes: task, questions, seed, concurrency, token
    limit, a model folder (default: the embedded model) and where the plot goes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", default="chain_sum")
    parser.add_argument("--questions", type=int, default=questions)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--model", type=Path, default=None,
                        help="a Hugging Face model folder (default: the embedded SmolLM2)")
    parser.add_argument("--out-png", type=Path, default=png)
    return parser


def spawn_refinery(model: Path, served: str, engine_flags: Sequence[str], name: str) -> Any:
    """`refinery serve MODEL` on a free port, logging to a fresh temporary folder; use it with
    `tests.servers.running`."""
    import tempfile

    from tests.servers import REFINERY_READY, free_port, refinery_command, spawn

    logs = Path(tempfile.mkdtemp(prefix=f"refinery-{name}-"))
    port = free_port()
    return spawn(refinery_command(port, str(model), "--served-model-name", served,
                                  *engine_flags), logs / "refinery.log", port=port,
                 ready_paths=REFINERY_READY)
