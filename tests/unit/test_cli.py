"""`refinery serve` argument handling: vLLM's parser for engine flags, Refinery's defaults."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from server.cli import (
    CPU_BLOCK_SIZE,
    apply_engine_defaults,
    build_serve_parser,
    cpu_kv_cache_default_gib,
    main,
    resolve_serve_args,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REFINERY_PORT", "REFINERY_API_KEYS", "REFINERY_SERVED_MODEL_NAME",
                 "REFINERY_MODEL", "REFINERY_HOST", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(name, raising=False)


def test_no_model_means_the_embedded_one() -> None:
    settings, args = resolve_serve_args([])
    assert settings.model is None and args.model is None
    assert args.port == 8000 and args.host == "0.0.0.0"
    assert args.scheduling_policy == "priority"


def test_positional_model_and_vllm_engine_flags_pass_through() -> None:
    _, args = resolve_serve_args(
        ["some/model", "--max-model-len", "1024", "--tensor-parallel-size", "2",
         "--scheduling-policy", "priority", "--enforce-eager"]
    )
    assert args.model == "some/model"
    assert args.max_model_len == 1024
    assert args.tensor_parallel_size == 2
    assert args.scheduling_policy == "priority"
    assert args.enforce_eager is True


def test_refinery_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINERY_PORT", "9100")
    monkeypatch.setenv("REFINERY_API_KEYS", "env-key")
    monkeypatch.setenv("REFINERY_SERVED_MODEL_NAME", "env-name")
    settings, args = resolve_serve_args(["--api-key", "flag-key"])
    assert args.port == 9100  # from the environment
    assert settings.api_keys == ["flag-key"]  # the flag wins
    assert args.api_key is None  # Refinery checks keys itself, not vLLM
    assert args.served_model_name == ["env-name"]
    _, args = resolve_serve_args(["--served-model-name", "a", "b", "--port", "9200"])
    assert args.served_model_name == ["a", "b"]
    assert args.port == 9200


def test_invalid_refinery_value_exits_with_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        resolve_serve_args(["--drain-timeout", "-5"])
    assert exc.value.code == 2


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(SystemExit):
        resolve_serve_args(["--no-such-flag"])


def _namespace(**overrides: object) -> argparse.Namespace:
    return argparse.Namespace(
        **{"enable_prefix_caching": None, "enable_chunked_prefill": None,
           "scheduling_policy": None, "kv_cache_memory_bytes": None, "enforce_eager": None,
           "block_size": None, **overrides}
    )


def test_cpu_defaults_prefix_caching_on_chunked_prefill_off_no_reserved_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = _namespace()
    apply_engine_defaults(args, on_cpu=True)
    assert args.enable_prefix_caching is True
    assert args.enable_chunked_prefill is False
    assert args.scheduling_policy == "priority"
    assert args.enforce_eager is True
    assert args.block_size == CPU_BLOCK_SIZE == 64
    assert os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_cpu_without_native_bf16_serves_float32_unless_the_user_chose() -> None:
    slow_bf16 = _namespace()
    apply_engine_defaults(slow_bf16, on_cpu=True, native_bf16=False)
    assert slow_bf16.dtype == "float32"
    native = _namespace()
    apply_engine_defaults(native, on_cpu=True, native_bf16=True)
    assert native.dtype == "auto"
    gpu = _namespace()
    apply_engine_defaults(gpu, on_cpu=False, native_bf16=False)
    assert gpu.dtype == "auto"
    for chosen in ("bfloat16", "auto"):
        kept = _namespace(dtype=chosen)
        apply_engine_defaults(kept, on_cpu=True, native_bf16=False)
        assert kept.dtype == chosen


def test_an_absent_dtype_flag_is_left_for_refinery_to_choose() -> None:
    assert build_serve_parser().parse_args([]).dtype is None
    assert build_serve_parser().parse_args(["--dtype", "auto"]).dtype == "auto"


def test_user_choices_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    args = _namespace(enable_prefix_caching=False, enable_chunked_prefill=True,
                      scheduling_policy="fcfs", enforce_eager=False, block_size=128)
    apply_engine_defaults(args, on_cpu=True)
    assert args.block_size == 128
    assert args.enforce_eager is False
    assert args.enable_prefix_caching is False
    assert args.enable_chunked_prefill is True
    assert args.scheduling_policy == "fcfs"
    assert os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"


def test_cpu_kv_cache_is_sized_unless_the_user_sized_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = _namespace()
    apply_engine_defaults(args, on_cpu=True)
    assert args.kv_cache_memory_bytes == cpu_kv_cache_default_gib() * 2**30
    chosen = _namespace(kv_cache_memory_bytes=123 * 2**20)
    apply_engine_defaults(chosen, on_cpu=True)
    assert chosen.kv_cache_memory_bytes == 123 * 2**20
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    from_env = _namespace()
    apply_engine_defaults(from_env, on_cpu=True)
    assert from_env.kv_cache_memory_bytes is None  # vLLM reads the variable itself


def test_cpu_kv_cache_default_fits_small_machines() -> None:
    assert cpu_kv_cache_default_gib(64 * 2**30) == 4
    assert cpu_kv_cache_default_gib(10 * 2**30) == 2
    assert cpu_kv_cache_default_gib(2**30) == 1


def test_gpu_keeps_vllm_chunked_prefill_default() -> None:
    args = _namespace()
    apply_engine_defaults(args, on_cpu=False)
    assert args.enable_prefix_caching is True
    assert args.enable_chunked_prefill is None
    assert args.enforce_eager is False
    assert args.block_size is None  # vLLM's GPU default (16) stays


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("refinery ") and "vLLM 0.32.0" in out


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_kserve_default_serve_arguments_parse() -> None:
    """KServe's LLMInferenceService template runs `vllm serve /mnt/models --served-model-name
    NAME publishers/NS/models/NAME --port 8000` plus vLLM flags: `refinery serve` takes them."""
    settings, args = resolve_serve_args([
        "/mnt/models", "--served-model-name", "qwen", "publishers/llm/models/qwen",
        "--port", "8000", "--disable-access-log-for-endpoints", "/health,/metrics,/ping",
        "--shutdown-timeout", "15",
    ])
    assert (settings.model, settings.port, settings.served_model_name) == (
        "/mnt/models", 8000, "qwen")
    assert args.model == "/mnt/models" and args.port == 8000
    assert args.served_model_name == ["qwen", "publishers/llm/models/qwen"]


def test_admission_and_security_flags_become_settings(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k1\n")
    settings, _ = resolve_serve_args([
        "--max-outstanding-sequences", "32", "--queue-factor", "1.5", "--request-timeout", "90",
        "--api-keys-file", str(keys), "--metrics-auth",
    ])
    assert settings.max_outstanding_sequences == 32
    assert settings.queue_factor == 1.5
    assert settings.request_timeout == 90
    assert settings.api_keys_file == keys
    assert settings.metrics_auth is True
    settings, _ = resolve_serve_args([])
    assert settings.metrics_auth is False and settings.max_outstanding_sequences is None
