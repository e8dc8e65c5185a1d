"""The certainty plugin's parts without an engine: the reductions, the carrier columns, the
start-up check of vLLM's internals, the per-sample summary."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from server.engine.certainty.frontend_hooks import _split
from server.engine.certainty.reductions import (
    STATISTICS_TAG,
    append_statistics,
    statistics_from_logprobs,
    token_statistics,
)
from server.engine.certainty.summary import lowest_window_mean, summarise
from server.engine.vllm_internals import (
    CERTAINTY_HOOKS,
    SERVING_INTERNALS,
    Hooked,
    VllmMismatch,
    check_internals,
    installed_vllm,
)


def _float64_reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.double()
    vocab = z.shape[-1]
    probs = torch.softmax(z, dim=-1)
    # KL(U‖p) = Σ_j (1/V) log((1/V) / p_j), written out from the definition.
    kl = (1.0 / vocab * (math.log(1.0 / vocab) - torch.log(probs))).sum(dim=-1)
    entropy = -(probs * torch.log(probs)).sum(dim=-1)
    return kl, entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_statistics_match_the_definition(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 49152, generator=generator) * 4).to(dtype)
    before = logits.clone()
    statistics = token_statistics(logits)
    kl, entropy = _float64_reference(logits)
    assert statistics.dtype == torch.float32 and statistics.shape == (6, 2)
    assert torch.allclose(statistics[:, 0].double(), kl, atol=1e-4)
    assert torch.allclose(statistics[:, 1].double(), entropy, atol=1e-4)
    assert torch.equal(logits, before)  # the sampler reads them afterwards


def test_statistics_from_vllms_log_softmax_equal_those_from_the_logits() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 49152, generator=generator) * 4 + 3
    from_logprobs = statistics_from_logprobs(logits.log_softmax(dim=-1, dtype=torch.float32))
    kl, entropy = _float64_reference(logits)
    assert torch.allclose(from_logprobs[:, 0].double(), kl, atol=1e-4)
    assert torch.allclose(from_logprobs[:, 1].double(), entropy, atol=1e-4)


def test_uniform_logits_have_zero_certainty_and_full_entropy() -> None:
    statistics = token_statistics(torch.zeros(2, 1000))
    assert torch.allclose(statistics[:, 0], torch.zeros(2), atol=1e-5)
    assert torch.allclose(statistics[:, 1], torch.full((2,), math.log(1000)), atol=1e-4)


def _tensors(rows: int, columns: int):
    from vllm.v1.outputs import LogprobsTensors

    ids = torch.arange(rows * columns, dtype=torch.int64).view(rows, columns)
    values = -torch.rand(rows, columns)
    return LogprobsTensors(ids, values, torch.ones(rows, dtype=torch.int64))


def test_statistics_ride_with_the_logprobs_and_are_stripped_again() -> None:
    tensors = _tensors(3, 4)
    statistics = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    carried = append_statistics(tensors, statistics)
    assert carried.logprob_token_ids.shape == (3, 6)
    assert (carried.logprob_token_ids[:, -2:] == STATISTICS_TAG).all()
    stripped, values = _split(carried.tolists())
    original = tensors.tolists()
    assert (stripped.logprob_token_ids == original.logprob_token_ids).all()
    assert (stripped.logprobs == original.logprobs).all()
    assert values.tolist() == statistics.tolist()


def test_untagged_logprobs_pass_through_untouched() -> None:
    lists = _tensors(2, 3).tolists()
    stripped, values = _split(lists)
    assert values is None and stripped is lists


def test_full_vocabulary_logprobs_get_no_columns() -> None:
    from vllm.v1.outputs import LogprobsTensors

    full = LogprobsTensors(torch.empty(0), torch.randn(2, 50), torch.empty(0))
    assert append_statistics(full, torch.zeros(2, 2)) is full


@pytest.mark.parametrize("reliance", [CERTAINTY_HOOKS, SERVING_INTERNALS],
                         ids=["certainty_hooks", "serving_internals"])
def test_installed_vllm_has_every_internal_refinery_relies_on(reliance) -> None:
    check_internals(reliance)


def test_a_changed_internal_stops_start_up_naming_the_version() -> None:
    changed = Hooked("vllm.v1.sample.sampler", "Sampler.forward", ("self", "logits"))
    missing = Hooked("vllm.v1.engine.logprobs", "LogprobsProcessor.gone", ("self",))
    with pytest.raises(VllmMismatch) as raised:
        check_internals(dataclasses.replace(CERTAINTY_HOOKS, internals=(changed, missing)))
    message = str(raised.value)
    assert installed_vllm() in message and "REFINERY_CERTAINTY=off" in message
    assert "Sampler.forward takes" in message and "LogprobsProcessor.gone is missing" in message


def test_a_moved_serving_internal_names_the_strategy_path() -> None:
    gone = Hooked("vllm.entrypoints.serve.utils.api_utils", "get_max_tokens_v2", ("x",))
    with pytest.raises(VllmMismatch, match="strategy requests cannot run") as raised:
        check_internals(dataclasses.replace(SERVING_INTERNALS, internals=(gone,)))
    assert "get_max_tokens_v2 is missing" in str(raised.value)


def test_the_plugin_reads_only_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.engine import certainty

    monkeypatch.setenv("REFINERY_PORT", "not-a-port")  # would fail Settings()
    monkeypatch.delenv("REFINERY_CERTAINTY", raising=False)
    assert certainty.enabled() is True
    monkeypatch.setenv("REFINERY_CERTAINTY", "off")
    assert certainty.enabled() is False
    monkeypatch.setenv("REFINERY_CERTAINTY", "maybe")
    with pytest.raises(ValueError, match="REFINERY_CERTAINTY='maybe'"):
        certainty.enabled()


def test_hooks_install_once() -> None:
    from vllm.v1.engine.logprobs import LogprobsProcessor
    from vllm.v1.sample.sampler import Sampler

    from server.engine.certainty.frontend_hooks import install_frontend_hooks
    from server.engine.certainty.worker_hooks import install_worker_hooks

    install_worker_hooks()
    install_frontend_hooks()
    forward, update = Sampler.forward, LogprobsProcessor._update_sample_logprobs
    install_worker_hooks()
    install_frontend_hooks()
    assert Sampler.forward is forward and LogprobsProcessor._update_sample_logprobs is update
    assert forward.__wrapped__.__qualname__ == "Sampler.forward"


def test_lowest_window_mean_finds_the_worst_stretch() -> None:
    values = [5.0, 5.0, 1.0, 1.0, 5.0, 5.0]
    assert lowest_window_mean(values, window=2) == 1.0
    assert lowest_window_mean(values, window=3) == pytest.approx(7 / 3)
    assert lowest_window_mean(values, window=100) == pytest.approx(22 / 6)


def test_summary_of_a_sample() -> None:
    summary = summarise([2.0, 4.0], [1.0, 3.0], window=1)
    assert (summary.certainty, summary.entropy, summary.lowest_group_certainty) == (3.0, 2.0, 2.0)
    assert summarise([]) is None
    assert summarise([1.0]).entropy is None


class _CountingTokenizer:
    """Decodes a token id as its decimal text, counting the calls."""

    def __init__(self) -> None:
        self.decodes = 0

    def decode(self, token_ids: list[int], **_: object) -> str:
        self.decodes += 1
        return str(token_ids[0])

    def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str]:
        return [str(t) for t in token_ids]


def _processor(tokenizer: _CountingTokenizer, extra_args: dict[str, int]):
    from types import SimpleNamespace

    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.logprobs import LogprobsProcessor

    from server.engine.certainty.frontend_hooks import install_frontend_hooks

    install_frontend_hooks()
    params = SamplingParams(logprobs=0, flat_logprobs=True, extra_args=extra_args)
    return LogprobsProcessor.from_new_request(tokenizer, SimpleNamespace(sampling_params=params))


@pytest.mark.parametrize("text_wanted", [True, False])
def test_sub_requests_that_read_no_logprob_text_skip_decoding_it(text_wanted: bool) -> None:
    """Refinery's own sub-requests carry the statistics on the sampled token's logprob and never
    read its text: vLLM must not decode each sampled token a second time for them. A request
    without the flag (a user's plain request asking for certainty) keeps vLLM's entries."""
    from server.engine.certainty import CERTAINTY_EXTRA_ARG, LOGPROB_TEXT_EXTRA_ARG

    extra = {CERTAINTY_EXTRA_ARG: 1, **({} if text_wanted else {LOGPROB_TEXT_EXTRA_ARG: 0})}
    tokenizer = _CountingTokenizer()
    processor = _processor(tokenizer, extra)
    statistics = torch.tensor([[0.5, 1.5], [0.25, 2.5]])
    sampled = _sampled_logprobs([[7], [9]], [[-0.1], [-0.2]])
    processor._update_sample_logprobs(append_statistics(sampled, statistics).tolists())
    assert processor.cumulative_logprob == pytest.approx(-0.3)
    assert _statistics_on(processor) == ([0.5, 0.25], [1.5, 2.5])
    assert processor.tokenizer is tokenizer  # given back after the update
    entries = list(processor.logprobs)
    assert [list(e) for e in entries] == [[7], [9]]
    decoded = [e[t].decoded_token for e, t in zip(entries, (7, 9), strict=True)]
    if text_wanted:
        assert decoded == ["7", "9"] and tokenizer.decodes >= 2
    else:
        assert decoded == [None, None] and tokenizer.decodes == 0


def _sampled_logprobs(ids: list[list[int]], values: list[list[float]]):
    from vllm.v1.outputs import LogprobsTensors

    return LogprobsTensors(torch.tensor(ids), torch.tensor(values),
                           torch.zeros(len(ids), dtype=torch.int64))


def _statistics_on(processor: object) -> tuple[list[float], list[float]]:
    from server.engine.certainty.frontend_hooks import _ATTRIBUTE

    sink = getattr(processor, _ATTRIBUTE)
    return sink.certainty, sink.entropy
