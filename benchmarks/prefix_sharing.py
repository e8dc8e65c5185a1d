"""How much of a strategy request's prompt the engine really computes, by KV block size, prompt
length and number of samples: vLLM's own prefix-cache counters, read through /metrics.

    python benchmarks/prefix_sharing.py [--block-sizes 32,64,128] [--samples 4,8,16]
                                        [--lengths 16,64,128,256,512,2000] [-- ENGINE FLAGS]

For every block size a fresh `refinery serve` runs; each request is a fixed self-consistency
request of N samples (8 tokens each) whose prompt starts with a nonce no earlier request used,
so nothing is cached before it. Prompt tokens computed = prefix-cache queries − hits during
that request; "ideal" is one prefill (the prompt once). The plot shows computed tokens per
prompt token against the prompt length.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from harness import (
    prefix_cache_counters,
    save_figure,
    served_model,
    spawn_refinery,
    split_engine_flags,
)
from tests.servers import running

REPO = Path(__file__).resolve().parents[1]
SERVED = "model"
# A filler sentence of a known token count with SmolLM2's tokenizer is not needed: the server
# reports the prompt's token count in `usage`, and the filler is repeated until it is reached.
FILLER = " The quick brown fox jumps over the lazy dog."


def prompt_of(client: httpx.Client, target: int) -> tuple[str, int]:
    """A user message whose rendered prompt is close to `target` tokens (at least 16)."""
    text = f"Nonce {uuid.uuid4().hex}."
    while True:
        reply = client.post("/v1/chat/completions", json={
            "model": SERVED, "messages": [{"role": "user", "content": text}], "max_tokens": 1})
        tokens = reply.json()["usage"]["prompt_tokens"]
        if tokens >= target:
            return text, tokens
        text += FILLER * max(1, (target - tokens) // 12)


def measure(base_url: str, lengths: Sequence[int], samples: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for length in lengths:
            for n in samples:
                text, _ = prompt_of(client, length)
                text = f"{uuid.uuid4().hex} " + text  # a fresh first block: nothing cached
                hits0, queries0 = prefix_cache_counters(base_url)
                reply = client.post("/v1/chat/completions", json={
                    "model": SERVED, "messages": [{"role": "user", "content": text}],
                    "max_tokens": 8, "temperature": 0.8, "seed": 1,
                    "strategy": {"name": "self_consistency", "stop": "fixed",
                                 "max_samples": n}}).json()
                hits1, queries1 = prefix_cache_counters(base_url)
                prompt = reply["usage"]["prompt_tokens"]
                rows.append({"length": prompt, "n": n, "queries": queries1 - queries0,
                             "hits": hits1 - hits0,
                             "computed": (queries1 - queries0) - (hits1 - hits0)})
    return rows


def _plot(results: dict[int, list[dict[str, Any]]], n: int, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for block, rows in results.items():
        picked = [r for r in rows if r["n"] == n]
        ax.plot([r["length"] for r in picked], [r["computed"] / r["length"] for r in picked],
                marker="o", label=f"block {block}")
    ax.axhline(1, color="grey", linestyle=":", label="one prefill (ideal)")
    ax.axhline(n, color="grey", linestyle="--", label=f"no sharing ({n} prefills)")
    ax.set_xscale("log")
    ax.set_title(f"Prompt tokens computed per prompt token, self-consistency N={n}", fontsize=10)
    ax.set(xlabel="prompt tokens", ylabel="prompt tokens computed / prompt length")
    ax.legend(fontsize=8)
    save_figure(fig, png)


def main(argv: Sequence[str]) -> int:
    own, engine_flags = split_engine_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-sizes", default="32,64,128")
    parser.add_argument("--samples", default="4,8,16")
    parser.add_argument("--lengths", default="16,64,128,256,512,2000")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out-png", type=Path, default=REPO / "docs" / "prefix_sharing.png")
    args = parser.parse_args(own)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    model = served_model(args.model)
    blocks = [int(b) for b in args.block_sizes.split(",")]
    samples = [int(n) for n in args.samples.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    results: dict[int, list[dict[str, Any]]] = {}
    for block in blocks:
        server = spawn_refinery(model, SERVED, [*engine_flags, "--block-size", str(block)],
                                f"prefix-{block}")
        with running(server):
            results[block] = measure(server.base_url, lengths, samples)
    _plot(results, 8 if 8 in samples else samples[0], args.out_png)
    table = "\n".join(
        f"| {block} | {r['length']} | {r['n']} | {r['queries']:.0f} | {r['hits']:.0f} | "
        f"{r['computed']:.0f} | {r['computed'] / r['length']:.2f} |"
        for block, rows in results.items() for r in rows)
    print(f"""
### Prefix sharing: prompt tokens computed per strategy request

- command: `python benchmarks/prefix_sharing.py {shlex.join(argv)}`
- machine: {platform.platform()}, {os.cpu_count()} CPUs; model `{model.name}`
- date: {datetime.date.today().isoformat()}

| block size | prompt tokens | N | queried | cache hits | computed | computed / prompt |
|---|---|---|---|---|---|---|
{table}

![prefix sharing]({os.path.relpath(args.out_png, REPO / 'docs')})
""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
