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
