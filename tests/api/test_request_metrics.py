"""`refinery_requests_total` is labelled with the matched route's path template, or `other`
when no route matched, so that what clients send cannot grow the label set."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.routing import Route

from tests.api.asgi_client import (
    CHAT,
    COMPLETIONS,
    AppFactory,
    body_for,
    client_for,
    requests_counted,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("method", "path", "endpoint", "status"), [
    pytest.param("POST", CHAT, CHAT, 200, id="chat"),
    pytest.param("POST", COMPLETIONS, COMPLETIONS, 200, id="completions"),
    pytest.param("POST", CHAT, CHAT, 400, id="bad-request-on-a-route"),
    pytest.param("GET", "/v1/models", "/v1/models", 200, id="models"),
    pytest.param("GET", "/health", "/health", 200, id="health"),
    pytest.param("GET", CHAT, CHAT, 405, id="wrong-method-on-a-route"),
    pytest.param("GET", "/v1/nope", "other", 404, id="unknown-api-path"),
    pytest.param("GET", "/v1/chat/completions/x", "other", 404, id="below-a-route"),
])
async def test_requests_are_counted_by_route_template_and_status(
    client: httpx.AsyncClient, method: str, path: str, endpoint: str, status: int
) -> None:
    before = requests_counted(endpoint, status)

    if status == 400:
        response = await client.post(path, content=b"{not json")
    else:
        response = await client.request(method, path,
                                        json=body_for(path) if method == "POST" else None)

    assert response.status_code == status, response.text
    assert requests_counted(endpoint, status) == before + 1


async def test_endpoint_labels_are_only_route_templates_or_other(make_app: AppFactory) -> None:
    app = make_app()
    async with client_for(app) as client:
        for path in ("/v1/nope", "/v1/models/smollm2", "/a/b/c", "/favicon.ico"):
            assert (await client.get(path)).status_code == 404

    templates = {route.path for route in app.routes if isinstance(route, Route)}
    labels = {sample.labels["endpoint"] for metric in REGISTRY.collect()
              if metric.name == "refinery_requests" for sample in metric.samples}
    assert "other" in labels
    assert labels <= templates | {"other"}, labels - templates
