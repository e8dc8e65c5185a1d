"""Schemathesis against the live server, driven by its own /openapi.json: no 5xx, every answer
as the schema says (status, content type, body), every error OpenAI-shaped.

Bounded for CI: `EXAMPLES` cases per generation operation and mode, a fixed seed (the same cases
every run), at most 4 tokens per case (tests/e2e/fuzzing.py), a request timeout and a test
timeout as hang guards. benchmarks/fuzz_soak.py runs the same fuzzing with 10,000 cases.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode

from tests.e2e.fuzzing import CHECKS, GENERATION_PATHS, bounded_cases, load_schema
from tests.servers import ServerProcess

EXAMPLES = 30
SEED = 20261130
REQUEST_TIMEOUT_S = 60.0
SERVED_MODEL = "smollm2"


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> Any:
    return load_schema(server.base_url)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=str)
@pytest.mark.parametrize("path", GENERATION_PATHS)
def test_fuzzed_generation_requests_never_fail_the_server(
    server: ServerProcess, api_schema: Any, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path]["POST"]

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large])
    @given(case=bounded_cases(operation, mode, SERVED_MODEL))
    def fuzz(case: Any) -> None:
        response = case.call(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S)
        case.validate_response(response, checks=CHECKS)

    fuzz()


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/v1/models",
                                  "/v1/strategies"])
def test_read_only_endpoints_answer_as_documented(
    server: ServerProcess, api_schema: Any, path: str
) -> None:
    case = api_schema[path]["GET"].Case()
    response = case.call(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S)
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("field", ["stop", "bad_words"])
def test_a_lone_surrogate_in_text_for_the_engine_is_a_400(server: ServerProcess,
                                                          field: str) -> None:
    body = f'{{"model": "smollm2", "prompt": "hi", "max_tokens": 1, "{field}": ["\\udc00"]}}'
    response = httpx.post(f"{server.base_url}/v1/completions", content=body.encode(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400, response.text
