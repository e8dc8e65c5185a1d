"""Draw seeded samples with vLLM's offline `LLM` and dump what the certainty plugin returned.

    python -m tests.e2e.certainty_probe MODEL_DIR OUT.json [--dtype float32]

Run as a subprocess by tests/e2e/test_certainty.py, once per configuration (plugin on/off via
`REFINERY_CERTAINTY`, float32/bfloat16), because the plugin is installed per process. For
every prompt it draws seeded samples that ask for certainty (`logprobs=0` + the extra arg),
plain samples that ask for top-3 logprobs only, and one structured-output sample (a regex, so
that a grammar mask is applied to the logits before the sampler).

Then it runs the same batch again with the first prompt's certainty samples replaced by the
oracle: full-vocabulary logprobs (`logprobs=-1`) of the same seeded samples, from which the
test computes the exact value of the engine's own logits (KL(U‖p) = −log V − mean_j log p_j).
Prefix caching is off so that both batches compute exactly the same logits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

PROMPTS = (
    "The capital of France is",
    "Write one sentence about the sea:",
    "List three colours: red,",
)
SEEDS = (1, 2)
MAX_TOKENS = 24
ORACLE_TOKENS = 8
TEMPERATURE = 0.8
REGEX = r"(yes|no), because [a-z ]{4,30}\."


def _oracle(output) -> dict:
    """Per position: the mean log-probability over the whole vocabulary, and its size."""
    logprobs = output.logprobs  # FlatLogprobs; entry 0 of a position repeats the sampled token
    means, sizes = [], []
    for start, end in zip(logprobs.start_indices, logprobs.end_indices, strict=True):
        values = logprobs.logprobs[start + 1:end]
        means.append(math.fsum(values) / len(values))
        sizes.append(len(values))
    return {"token_ids": list(output.token_ids), "mean_logprob": means, "vocab": sizes}


def _sample(output) -> dict:
    from server.engine.certainty import statistics_of

    statistics = statistics_of(output)
    logprobs = None
    if output.logprobs is not None:
        logprobs = [{str(token): entry.logprob for token, entry in position.items()}
                    for position in output.logprobs]
    return {
        "token_ids": list(output.token_ids),
        "text": output.text,
        "certainty": None if statistics is None else statistics.certainty,
        "entropy": None if statistics is None else statistics.entropy,
        "logprobs": logprobs,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from server.engine import certainty

    llm = LLM(args.model, dtype=args.dtype, enforce_eager=True, enable_chunked_prefill=False,
              enable_prefix_caching=False, max_model_len=1024, seed=0, max_logprobs=-1)
    asked = [SamplingParams(max_tokens=MAX_TOKENS, temperature=TEMPERATURE, seed=seed,
                            logprobs=0, extra_args={certainty.CERTAINTY_EXTRA_ARG: 1})
             for seed in SEEDS]
    plain = [SamplingParams(max_tokens=MAX_TOKENS, temperature=TEMPERATURE, seed=seed,
                            logprobs=3) for seed in SEEDS]
    structured = SamplingParams(max_tokens=MAX_TOKENS, temperature=TEMPERATURE, seed=7,
                                logprobs=0, extra_args={certainty.CERTAINTY_EXTRA_ARG: 1},
                                structured_outputs=StructuredOutputsParams(regex=REGEX))
    prompts, params, kinds = [], [], []
    for prompt in PROMPTS:
        for kind, group in (("asked", asked), ("plain", plain)):
            for p in group:
                prompts.append(prompt)
                params.append(p)
                kinds.append(kind)
    prompts.append("Is the sea salty? Answer yes or no, with a reason:")
    params.append(structured)
    kinds.append("structured")
    # One batch: samples that ask and samples that do not run in the same engine steps.
    outputs = llm.generate(prompts, params, use_tqdm=False)
    records = [
        {"kind": kind, "prompt_token_ids": list(out.prompt_token_ids), **_sample(out.outputs[0])}
        for kind, out in zip(kinds, outputs, strict=True)
    ]
    # The oracle's first ORACLE_TOKENS steps run in a batch identical to the first run's;
    # no detokenizing of 49k candidates per position.
    oracle_params = [
        SamplingParams(max_tokens=ORACLE_TOKENS, temperature=TEMPERATURE, seed=p.seed,
                       logprobs=-1, flat_logprobs=True, detokenize=False)
        if i < len(asked) else p
        for i, p in enumerate(params)
    ]
    again = llm.generate(prompts, oracle_params, use_tqdm=False)
    oracles = [{"of": i, **_oracle(again[i].outputs[0])} for i in range(len(asked))]
    with open(args.out, "w") as handle:
        json.dump({"plugin_active": certainty.active(), "dtype": args.dtype,
                   "records": records, "oracles": oracles}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
