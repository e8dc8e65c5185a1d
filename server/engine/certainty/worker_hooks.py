"""Hooks in vLLM's model-runner processes: take the statistics from the raw logits.

vLLM 0.32 has two sampling paths, and the plugin wraps both:
- model runner V1 (`vllm.v1.worker.gpu_model_runner`, also the base of the CPU runner):
  `vllm.v1.sample.sampler.Sampler.forward(logits, sampling_metadata, …)`; structured-output
  masks are applied before it by the module-level `apply_grammar_bitmask`.
- model runner V2 (`vllm.v1.worker.gpu`, the default on CUDA when Triton is available):
  `vllm.v1.worker.gpu.sample.sampler.Sampler.__call__(logits, input_batch)`; masks are applied
  before it by `StructuredOutputsWorker.apply_grammar_bitmask`.

Both samplers get the raw logits (before temperature, penalties and top-k/top-p) and only read
them, so sampled tokens are unchanged. A grammar mask writes −inf into the logits in place
before the sampler runs, so the mask hooks take the statistics from the unmasked logits first
and hand them to the sampler hook, which would otherwise see masked rows.

Statistics are computed only in steps where the batch returns sampled-token logprobs, and they
ride back inside those logprobs; speculative decoding (several logits rows per request) is not
covered, and `refinery serve` refuses that combination.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from server.engine.certainty.reductions import (
    append_statistics,
    statistics_from_logprobs,
    token_statistics,
)

__all__ = ["install_worker_hooks"]


class _MaskedLogitsStatistics:
    """Statistics of the logits a grammar mask is about to overwrite, for the sampler hook.

    One engine step at a time runs in a worker process: the mask hook stores, the sampler hook
    of the same step takes. Matched by tensor identity, so a stale entry is never used.
    """

    def __init__(self) -> None:
        self._logits: torch.Tensor | None = None
        self._statistics: torch.Tensor | None = None

    def store(self, logits: torch.Tensor) -> None:
        self._logits, self._statistics = logits, token_statistics(logits)

    def take(self, logits: torch.Tensor) -> torch.Tensor | None:
        statistics = self._statistics if self._logits is logits else None
        self._logits = self._statistics = None
        return statistics


_masked = _MaskedLogitsStatistics()


class _RawLogprobs:
    """The log-softmax V1's sampler computes of the raw logits, kept for the sampler hook.

    With `logprobs_mode="raw_logprobs"` (vLLM's default) `Sampler.forward` starts with
    `compute_logprobs(logits)` on the untouched logits whenever the batch wants logprobs; the
    statistics follow from it in two passes instead of recomputing a logsumexp.
    """

    def __init__(self) -> None:
        self._logits: torch.Tensor | None = None
        self._logprobs: torch.Tensor | None = None

    def store(self, logits: torch.Tensor, logprobs: torch.Tensor) -> None:
        self._logits, self._logprobs = logits, logprobs

    def take(self, logits: torch.Tensor) -> torch.Tensor | None:
        logprobs = self._logprobs if self._logits is logits else None
        self._logits = self._logprobs = None
        return logprobs


_raw_logprobs = _RawLogprobs()


def _statistics_for(logits: torch.Tensor, wanted: bool) -> torch.Tensor | None:
    """The step's statistics when the batch returns logprobs; clears the mask hook's entry."""
    masked = _masked.take(logits)
    if not wanted:
        return None
    return masked if masked is not None else token_statistics(logits)


def _wrap_v1_sampler(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def sampler_forward(self, logits, sampling_metadata, predict_bonus_token=False,
                        logprobs_mode_override=None):
        num_logprobs = sampling_metadata.max_num_logprobs
        wanted = num_logprobs is not None and num_logprobs >= 0 and not predict_bonus_token
        reuses_logprobs = (logprobs_mode_override or self.logprobs_mode) == "raw_logprobs"
        masked = _masked.take(logits)
        computed = None
        if wanted and masked is None and not reuses_logprobs:
            computed = token_statistics(logits)  # now: float32 logits get modified in place
        output = forward(self, logits, sampling_metadata, predict_bonus_token,
                         logprobs_mode_override)
        raw_logprobs = _raw_logprobs.take(logits)
        if not wanted or output.logprobs_tensors is None:
            return output
        statistics = masked if masked is not None else computed
        if statistics is None and raw_logprobs is not None:
            statistics = statistics_from_logprobs(raw_logprobs)
        if statistics is not None:
            output.logprobs_tensors = append_statistics(output.logprobs_tensors, statistics)
        return output

    sampler_forward.__refinery_hook__ = True
    return sampler_forward


def _wrap_v1_logprobs(compute: Callable[..., Any]) -> staticmethod:
    @functools.wraps(compute)
    def compute_logprobs(logits):
        logprobs = compute(logits)
        _raw_logprobs.store(logits, logprobs)
        return logprobs

    compute_logprobs.__refinery_hook__ = True
    return staticmethod(compute_logprobs)


def _wrap_v1_mask(apply_mask: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(apply_mask)
    def apply_grammar_bitmask(scheduler_output, grammar_output, input_batch, logits):
        _masked.store(logits)
        return apply_mask(scheduler_output, grammar_output, input_batch, logits)

    apply_grammar_bitmask.__refinery_hook__ = True
    return apply_grammar_bitmask


def _wrap_v2_sampler(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def sampler_call(self, logits, input_batch):
        one_row_per_request = logits.shape[0] == input_batch.idx_mapping_np.shape[0]
        wanted = (one_row_per_request
                  and self.get_logprobs_dims(input_batch.idx_mapping_np) is not None)
        statistics = _statistics_for(logits, wanted)
        output = call(self, logits, input_batch)
        if statistics is not None and output.logprobs_tensors is not None:
            output.logprobs_tensors = append_statistics(output.logprobs_tensors, statistics)
        return output

    sampler_call.__refinery_hook__ = True
    return sampler_call


def _wrap_v2_mask(apply_mask: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(apply_mask)
    def apply_grammar_bitmask(self, logits, input_batch, grammar_req_ids, grammar_bitmask):
        if grammar_req_ids:
            _masked.store(logits)
        return apply_mask(self, logits, input_batch, grammar_req_ids, grammar_bitmask)

    apply_grammar_bitmask.__refinery_hook__ = True
    return apply_grammar_bitmask


def _hooked(function: object) -> bool:
    return getattr(function, "__refinery_hook__", False)


def install_worker_hooks() -> None:
    """Wrap both samplers and both mask functions (once per process)."""
    from vllm.v1.sample.sampler import Sampler as V1Sampler
    from vllm.v1.worker import gpu_model_runner
    from vllm.v1.worker.gpu.sample.sampler import Sampler as V2Sampler
    from vllm.v1.worker.gpu.structured_outputs import StructuredOutputsWorker

    if not _hooked(V1Sampler.forward):
        V1Sampler.forward = _wrap_v1_sampler(V1Sampler.forward)
    if not _hooked(V1Sampler.compute_logprobs):
        V1Sampler.compute_logprobs = _wrap_v1_logprobs(V1Sampler.compute_logprobs)
    if not _hooked(gpu_model_runner.apply_grammar_bitmask):
        gpu_model_runner.apply_grammar_bitmask = _wrap_v1_mask(
            gpu_model_runner.apply_grammar_bitmask)
    if not _hooked(V2Sampler.__call__):
        V2Sampler.__call__ = _wrap_v2_sampler(V2Sampler.__call__)
    if not _hooked(StructuredOutputsWorker.apply_grammar_bitmask):
        StructuredOutputsWorker.apply_grammar_bitmask = _wrap_v2_mask(
            StructuredOutputsWorker.apply_grammar_bitmask)
