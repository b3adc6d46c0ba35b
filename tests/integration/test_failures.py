"""Fail closed: when a part of the relay is down, the client gets the contract's JSON and
nothing is forwarded upstream."""

import os
import signal
import time

import httpx2 as httpx
import pytest

from tests.support.processes import free_port

pytestmark = pytest.mark.integration

INTERNAL = "OpenAI proxy internal error"


def get(relay, token, path="/models"):
    with httpx.Client(timeout=30) as client:
        return client.get(relay.api_base + path, headers={"authorization": f"Bearer {token}"})


def assert_internal_error(response, status=500):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == INTERNAL
    assert isinstance(body["details"], str)
    assert body["details"]
    assert set(body) == {"error", "details"}
    return body


@pytest.mark.ext_authz_only("Envoy serves known tenants until its lease ends (test_fast_path)")
def test_authz_unreachable_fails_closed_and_recovers_without_an_envoy_restart(
    make_relay, upstream, token_for
):
    relay = make_relay()
    token = token_for("acme")
    assert get(relay, token).status_code == 200
    upstream.clear()
    relay.authz.stop()
    body = assert_internal_error(get(relay, token))
    assert token not in body["details"]
    assert upstream.requests == []
    envoy_pid = relay.envoy.pid
    relay.start_authz()
    assert get(relay, token).status_code == 200
    assert relay.envoy.pid == envoy_pid


@pytest.mark.ext_authz_only("with the fast path, a known tenant's request never waits for authz")
def test_authz_too_slow_times_out_closed(make_relay, upstream, token_for):
    relay = make_relay(check_timeout_s=0.5)
    token = token_for("acme")
    os.kill(relay.authz.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert_internal_error(get(relay, token))
        assert time.monotonic() - started < 5
        assert upstream.requests == []
    finally:
        os.kill(relay.authz.pid, signal.SIGCONT)


def test_upstream_refusing_connections_is_a_502_json(make_relay, upstream, token_for):
    relay = make_relay({"AUTHZ_UPSTREAM_URL": f"https://localhost:{free_port()}"})
    assert_internal_error(get(relay, token_for("acme")), status=502)


def test_upstream_reset_before_responding_is_a_502_json(relay, upstream, token_for):
    assert_internal_error(get(relay, token_for("acme"), "/test/drop"), status=502)


def test_upstream_reset_mid_stream_ends_the_stream_cleanly(relay, token_for):
    with httpx.Client(timeout=30) as client, client.stream(
        "GET", relay.api_base + "/test/reset?after=2",
        headers={"authorization": f"Bearer {token_for('acme')}"},
    ) as response:
        assert response.status_code == 200
        received: list[bytes] = []
        with pytest.raises(httpx.HTTPError):
            received.extend(response.iter_raw())
    assert b"".join(received).count(b"data:") == 2


def test_upstream_tls_it_cannot_verify_is_refused(make_relay, upstream, token_for, tmp_path):
    # The system trust store does not know the test CA: the relay must not connect.
    relay = make_relay({"AUTHZ_UPSTREAM_CA_FILE": ""})
    assert_internal_error(get(relay, token_for("acme")), status=502)
    assert upstream.requests == []


@pytest.mark.ext_authz_only("with the fast path, Envoy already holds the tenant's key")
def test_vault_unreachable_for_an_uncached_tenant_is_an_internal_error(
    make_relay, vault, upstream, token_for
):
    relay = make_relay()
    vault.pause()
    try:
        body = assert_internal_error(get(relay, token_for("initech")))
        assert vault.token not in body["details"]
    finally:
        vault.resume()
    assert upstream.requests == []
    assert get(relay, token_for("initech")).status_code == 200


def test_cert_endpoint_down_at_cold_start_is_an_internal_error_not_401(
    make_relay, firebase_certs, upstream, token_for
):
    firebase_certs.set_down(True)
    relay = make_relay(wait_ready=False)
    assert_internal_error(get(relay, token_for("acme")))
    assert upstream.requests == []
    firebase_certs.set_down(False)
    deadline = time.monotonic() + 10
    while get(relay, token_for("acme")).status_code != 200:
        assert time.monotonic() < deadline, "certs never recovered"
        time.sleep(0.2)  # poll: the store retries the endpoint at most once a second
