"""An unreachable upstream is said in words in the body's details, in the contract's error
shape (not Envoy's bare `no_healthy_upstream`); Envoy's access log names the cause."""

import json
import time

import httpx2 as httpx
import pytest

from tests.support.processes import free_port

pytestmark = pytest.mark.integration


def _get(relay, token):
    with httpx.Client(timeout=30) as client:
        return client.get(relay.api_base + "/models", headers={"authorization": f"Bearer {token}"})


def _logged_line(relay) -> dict:
    """The request's access log line, once Envoy has written it."""

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in reversed(relay.envoy.log_text().splitlines()):
            if line.startswith("{") and '"path"' in line:
                return dict(json.loads(line))
        time.sleep(0.1)  # poll until Envoy flushes its access log
    raise AssertionError("no access log line: " + relay.envoy.log_tail())


@pytest.mark.parametrize(("upstream_url", "words"), [
    (lambda: f"https://localhost:{free_port()}", "could not connect to the upstream"),
    (lambda: "https://relay-upstream.invalid", "the upstream is unreachable"),
])
def test_an_unreachable_upstream_is_said_in_words(make_relay, token_for, upstream_url, words):
    relay = make_relay({"AUTHZ_UPSTREAM_URL": upstream_url()})
    response = _get(relay, token_for("acme"))
    assert response.status_code == 502
    body = response.json()
    assert set(body) == {"error", "details"}
    assert body["error"] == "OpenAI proxy internal error"
    assert body["details"].startswith(words), body
    assert body["details"] != "no_healthy_upstream"
    logged = _logged_line(relay)
    assert logged["status"] == 502
    assert logged["flags"] in ("UF", "UH", "DF")
