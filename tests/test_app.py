"""Operational endpoints and web basics: health, readiness, metrics, security headers."""

from __future__ import annotations

import httpx
from fastapi import FastAPI


async def test_health_ready_and_metrics(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        await http.get("/fhir/R4/Patient/metrics-probe-missing")
        metrics = (await http.get("/metrics")).text
    # labelled by route template, never by the concrete id
    assert 'route="/fhir/R4/{type:ftype}/{id:fid}"' in metrics
    assert "metrics-probe-missing" not in metrics
    assert "smartmed_http_request_seconds_bucket" in metrics


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    for response in (await client.get("metadata"), await client.get("Nope/1")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["referrer-policy"] == "no-referrer"
