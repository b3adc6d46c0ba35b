"""Metering through the real Envoy: its gRPC access log reaches the authz service and the
request shows in /admin/usage (and `authz usage show`) within 1 s of its end."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.support.authz_cli import authz, authz_json
from tests.support.relay import RelayStack

pytestmark = pytest.mark.integration


def usage(stack: RelayStack, client_id: str, user: str | None = None) -> dict[str, Any]:
    query = f"client_id={client_id}" + (f"&user={user}" if user else "")
    url = f"http://127.0.0.1:{stack.metrics_port}/admin/usage?{query}"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["content-type"] == "application/json"
        body: dict[str, Any] = json.load(response)
        return body


def wait_for_requests(stack: RelayStack, client_id: str, count: int,
                      within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        report = usage(stack, client_id)
        if report["requests"] >= count:
            return report
        assert time.monotonic() < deadline, f"usage not counted within {within_s}s: {report}"
        time.sleep(0.02)


def test_allowed_request_counted_within_one_second(
        make_relay: Callable[..., RelayStack], token_for: Callable[..., str]) -> None:
    stack = make_relay()
    empty = usage(stack, "acme")
    assert empty == {"client_id": "acme", "day": empty["day"], "requests": 0,
                     "input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "users": {}}
    with httpx.Client(timeout=30) as http:
        client = openai.OpenAI(base_url=stack.api_base, api_key=token_for("acme", "meter-1"),
                               http_client=http, max_retries=0)
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        ended = time.monotonic()
        report = wait_for_requests(stack, "acme", 1, within_s=1.0)
        assert time.monotonic() - ended < 1.0
        # Exactly the upstream's usage, per tenant and per user (the token's subject).
        reported = completion.usage
        assert reported is not None
        numbers = {"requests": 1, "input_tokens": reported.prompt_tokens,
                   "output_tokens": reported.completion_tokens,
                   "total_tokens": reported.total_tokens}
        assert report == {"client_id": "acme", "day": report["day"], **numbers,
                          "users": {"meter-1": numbers}}
        # A denied request is not forwarded and not metered.
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=stack.api_base, api_key="not-a-token", http_client=http,
                          max_retries=0).models.list()
        # A second tenant's request does not show in the first's usage.
        openai.OpenAI(base_url=stack.api_base, api_key=token_for("globex", "meter-2"),
                      http_client=http, max_retries=0).models.list()
        wait_for_requests(stack, "globex", 1, within_s=1.0)
    assert usage(stack, "acme")["requests"] == 1
    admin = f"127.0.0.1:{stack.metrics_port}"
    shown = authz_json("usage", "show", "acme", "--admin", admin)
    assert shown == usage(stack, "acme")
    assert authz_json("usage", "show", "acme", "--user", "nobody", "--admin", admin)[
        "users"] == {}
    table = authz("usage", "show", "globex", env={"AUTHZ_METRICS_ADDR": admin})
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("globex  ")
    assert "tenant" in table.stdout
    assert authz("usage", "show", "../etc").returncode == 2
    with urllib.request.urlopen(stack.metrics_url, timeout=5) as response:
        metrics = response.read().decode()
    assert "authz_metered_requests_total 2.0" in metrics


def test_usage_endpoint_refuses_bad_queries(relay: RelayStack) -> None:
    for query in ("", "client_id=", "client_id=../x", "client_id=a%20b"):
        url = f"http://127.0.0.1:{relay.metrics_port}/admin/usage?{query}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 400


def test_usage_show_says_when_the_service_is_unreachable() -> None:
    from tests.support.processes import free_port

    result = authz("usage", "show", "acme", "--admin", f"127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert "cannot read usage" in result.stderr
