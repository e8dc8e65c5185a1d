"""What exact self-certainty costs, and what the top-20 estimate loses against it.

    python benchmarks/certainty.py [--requests 32 --max-tokens 128 --rounds 3]
                                   [--samples 256] [-- ENGINE FLAGS]

1. Cost: two `refinery serve` processes on the same model and flags, one with the plugin
   (`REFINERY_CERTAINTY=on`) and one without (`off`); the same streaming load on each, every
   request asking for certainty (`logprobs: 0`, `vllm_xargs: {"refinery_certainty": 1}`; the
   server without the plugin ignores the extra arg and does the same work otherwise). Rounds
   alternate which server goes first; the verdict is the median of per-round throughput
   ratios on/off, against a target of at most 3% cost (docs/benchmarks.md).
2. Agreement: `--samples` seeded samples drawn offline (vLLM `LLM`, plugin on) with top-20
   logprobs and the exact values of the same tokens; Spearman correlation of the top-20
   estimate (DeepConf token confidence, −mean of the top-20 logprobs) with the exact
   self-certainty, per sample (means) and per token.
3. Precision: the same samples' exact values (engine in the model's dtype) against a float32
   transformers forward pass over the same tokens: what the engine's dtype moves.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clients.loadgen import run_streaming_load
from harness import offline_llm, save_figure, split_engine_flags
from tests.servers import REFINERY_READY, free_port, refinery_command, running, spawn

REPO = Path(__file__).resolve().parents[1]
SERVED = "smollm2"
ON, OFF = "plugin on", "plugin off"
LOAD_PROMPTS = ("Write a story about a lighthouse keeper.", "Explain how bees make honey.",
                "Describe a walk through a forest in autumn.", "Tell me about trains.")
TOPICS = ("the sea", "a city", "music", "winter", "a garden", "the moon", "bread", "rivers",
          "a library", "mountains", "birds", "rain", "a market", "clocks", "snow", "bridges")


@dataclass(frozen=True)
class CostRun:
    server: str
    round: int
    tokens_per_s: float


def measure_cost(args: argparse.Namespace, model: Path, flags: list[str], logs: Path
                 ) -> list[CostRun]:
    servers = {}
    for name, value in ((ON, "on"), (OFF, "off")):
        port = free_port()
        servers[name] = spawn(refinery_command(port, str(model), "--served-model-name", SERVED,
                                               *flags),
                              logs / f"{value}.log", port=port, ready_paths=REFINERY_READY,
                              env={"REFINERY_CERTAINTY": value})
    extra = {"logprobs": 0, "vllm_xargs": {"refinery_certainty": 1}}
    runs: list[CostRun] = []
    with running(servers[ON]) as on, running(servers[OFF]) as off:
        live = {ON: on, OFF: off}
        for name in (ON, OFF):  # warm-up
            asyncio.run(run_streaming_load(live[name].base_url, SERVED, requests=4,
                                           concurrency=4, max_tokens=8, prompts=LOAD_PROMPTS,
                                           seed=0, progress=False, extra_body=extra))
        for rnd in range(1, args.rounds + 1):
            order = (ON, OFF) if rnd % 2 else (OFF, ON)
            for name in order:
                result = asyncio.run(run_streaming_load(
                    live[name].base_url, SERVED, requests=args.requests,
                    concurrency=args.requests, max_tokens=args.max_tokens, prompts=LOAD_PROMPTS,
                    seed=rnd * 1000, extra_body=extra))
                runs.append(CostRun(name, rnd, result.output_tokens_per_s))
                print(f"round {rnd}: {name}: {result.output_tokens_per_s:.0f} tok/s", flush=True)
    return runs


@dataclass(frozen=True)
class DrawnSample:
    prompt_token_ids: list[int]
    token_ids: list[int]
    exact: list[float]
    topk: list[float]


def draw_samples(args: argparse.Namespace, model: Path, engine_flags: list[str]
                 ) -> tuple[list[DrawnSample], str]:
    from tqdm import tqdm
    from vllm import SamplingParams

    from server.engine import certainty
    from server.engine.vllm_sampler import topk_confidences

    llm = offline_llm(model, engine_flags)
    assert certainty.active(), "the plugin must be on for the agreement measurement"
    tokenizer = llm.get_tokenizer()
    per_prompt = 8
    prompts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Write two sentences about {TOPICS[i % len(TOPICS)]}."}],
        tokenize=False, add_generation_prompt=True) for i in range(math.ceil(args.samples
                                                                             / per_prompt))]
    params = [SamplingParams(max_tokens=64, temperature=0.8, seed=1000 * i + k, logprobs=20,
                             flat_logprobs=True,
                             extra_args={certainty.CERTAINTY_EXTRA_ARG: 1})
              for i in range(len(prompts)) for k in range(per_prompt)]
    inputs = [p for p in prompts for _ in range(per_prompt)]
    samples = []
    for out in tqdm(llm.generate(inputs, params, use_tqdm=True)[: args.samples],
                    desc="collect", leave=False):
        completion = out.outputs[0]
        exact = certainty.statistics_of(completion)
        samples.append(DrawnSample(list(out.prompt_token_ids), list(completion.token_ids),
                                   exact.certainty, topk_confidences(completion.logprobs)))
    dtype = str(llm.llm_engine.model_config.dtype).replace("torch.", "")
    return samples, dtype


def agreement(samples: Sequence[DrawnSample]) -> tuple[float, float]:
    from scipy.stats import spearmanr

    per_sample = spearmanr([statistics.fmean(s.exact) for s in samples],
                           [statistics.fmean(s.topk) for s in samples]).statistic
    per_token = spearmanr([v for s in samples for v in s.exact],
                          [v for s in samples for v in s.topk]).statistic
    return float(per_sample), float(per_token)


def precision(samples: Sequence[DrawnSample], model: Path) -> tuple[float, float, float]:
    """(median, max relative error of the mean, max absolute per-token error) vs float32."""
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    relative, absolute = [], []
    for s in samples:
        with torch.no_grad():
            logits = reference(torch.tensor([s.prompt_token_ids + s.token_ids])).logits[0]
        start = len(s.prompt_token_ids) - 1
        z = logits[start:start + len(s.token_ids)].double()
        expected = (torch.logsumexp(z, -1) - z.mean(-1) - math.log(z.shape[-1])).tolist()
        mean, expected_mean = statistics.fmean(s.exact), statistics.fmean(expected)
        relative.append(abs(mean - expected_mean) / abs(expected_mean))
        absolute.append(max(abs(a - b) for a, b in zip(s.exact, expected, strict=True)))
    return statistics.median(relative), max(relative), max(absolute)


def _plot(runs: list[CostRun], samples: Sequence[DrawnSample], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = sorted({r.round for r in runs})
    for k, name in enumerate((ON, OFF)):
        left.bar([n + (k - 0.5) * 0.4 for n in rounds],
                 [next(r.tokens_per_s for r in runs if r.server == name and r.round == n)
                  for n in rounds], 0.4, label=name)
    left.set(title="Throughput, every request asking for certainty", xlabel="round",
             ylabel="output tokens/s", xticks=rounds)
    left.legend()
    right.scatter([statistics.fmean(s.exact) for s in samples],
                  [statistics.fmean(s.topk) for s in samples], s=8)
    right.set(title="Per sample: exact self-certainty vs top-20 estimate",
              xlabel="exact self-certainty (mean KL(U‖p))",
              ylabel="top-20 estimate (−mean top-20 logprob)")
    save_figure(fig, png)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--kv-cache-space", type=float, default=2.0)
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "certainty.png")
    return parser.parse_args(own), engine_flags


def main(argv: Sequence[str]) -> int:
    args, engine_flags = _parse(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{args.kv_cache_space:g}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from server.embedded_model import ensure_embedded_model
    from server.settings import Settings

    model = ensure_embedded_model(Settings().cache_dir)
    logs = Path(tempfile.mkdtemp(prefix="refinery-certainty-"))
    runs = measure_cost(args, model, engine_flags, logs)
    samples, dtype = draw_samples(args, model, engine_flags)
    per_sample, per_token = agreement(samples)
    median_rel, max_rel, max_abs = precision(samples, model)
    _plot(runs, samples, args.out_png)

    ratios = [next(r.tokens_per_s for r in runs if r.server == ON and r.round == n)
              / next(r.tokens_per_s for r in runs if r.server == OFF and r.round == n)
              for n in range(1, args.rounds + 1)]
    cost = 1 - statistics.median(ratios)
    # Equal work per run: the pooled ratio (harmonic means) is total time off over total time
    # on. With rounds alternating who goes first, an order effect cancels out in it.
    pooled = (statistics.harmonic_mean([r.tokens_per_s for r in runs if r.server == ON])
              / statistics.harmonic_mean([r.tokens_per_s for r in runs if r.server == OFF]))
    rows = "\n".join(f"| {r.round} | {r.server} | {r.tokens_per_s:.0f} |" for r in runs)
    tokens = sum(len(s.token_ids) for s in samples)
    print(f"""
### Exact self-certainty: cost, and agreement of the top-20 estimate

- command: `python benchmarks/certainty.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs
- model: `{model.name}` ({dtype}); engine flags as `refinery serve` resolves them \
{shlex.join(engine_flags)}
- date: {datetime.date.today().isoformat()}

Cost: {args.requests} concurrent streaming completions × {args.max_tokens} tokens
(`ignore_eos`), each asking for certainty; {args.rounds} rounds, order alternated.

| round | server | output tok/s |
|---|---|---|
{rows}

| | target | measured |
|---|---|---|
| throughput cost of the plugin (1 − median on/off ratio) | ≤ 3% | {100 * cost:.1f}% \
(ratios {", ".join(f"{r:.3f}" for r in ratios)}) |
| throughput cost, pooled over rounds (1 − time off / time on) | ≤ 3% | {100 * (1 - pooled):.1f}% |
| Spearman(exact, top-20 estimate), per sample ({len(samples)} samples) | | {per_sample:.3f} |
| Spearman(exact, top-20 estimate), per token ({tokens} tokens) | | {per_token:.3f} |
| {dtype} engine vs float32 transformers, mean certainty, relative error | \
| median {median_rel:.1e}, max {max_rel:.1e} |
| {dtype} engine vs float32 transformers, per token, max absolute error | | {max_abs:.3f} |

![certainty]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
