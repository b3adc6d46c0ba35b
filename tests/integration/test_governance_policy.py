"""Governance part 1 through the real stack (Envoy, authz, OpenBao, the TLS fake upstream,
the openai SDK): endpoint rules, path tricks, the model allow-list, partial bodies,
uploads that keep streaming, and a broken policy failing closed. In every refusal the
upstream receives nothing."""

from __future__ import annotations

import hashlib
import http.client
import io
import json

import httpx2 as httpx
import openai
import pytest

pytestmark = pytest.mark.integration

ENDPOINT_DENIED = {"error": "Endpoint not allowed"}
MODEL_DENIED = {"error": "Model not allowed"}
BAD_REQUEST = {"error": "Bad request"}


@pytest.fixture(scope="module")
def governed_tenants(vault):
    vault.put_tenant("gov-inference", "sk-gov-inference-0123456789",
                     policy={"endpoints": "inference"})
    # A string holding the JSON is accepted too.
    vault.put_tenant("gov-models", "sk-gov-models-0123456789", policy=json.dumps({
        "endpoints": ["POST /v1/chat/completions", "POST /v1/files", "GET /v1/models*"],
        "models": ["gpt-4o-mini", "text-embedding-3-*"]}))
    vault.put_tenant("gov-broken", "sk-gov-broken-0123456789",
                     policy={"endpoints": "inference", "modles": ["gpt-4o"]})
    return ("gov-inference", "gov-models", "gov-broken")


def call(relay, token, method, path, body=None, headers=None):
    with httpx.Client(timeout=30) as client:
        return client.request(method, relay.url + path, content=body, headers={
            "authorization": f"Bearer {token}", "content-type": "application/json",
            **(headers or {})})


def assert_refused(response, upstream, status, body):
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert response.json() == body
    assert upstream.requests == []


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/openai/v1/chat/completions"),
    ("GET", "/api/openai/v1/chat/completions/chatcmpl-1/messages"),
    ("GET", "/api/openai/v1/files"),
    ("GET", "/api/openai/v1/responses/resp_123"),
    ("DELETE", "/api/openai/v1/responses/resp_123"),
    ("POST", "/api/openai/v1/realtime/client_secrets"),
    ("GET", "/api/openai/v1/vector_stores"),
    ("POST", "/api/openai/v1/batches"),
    ("GET", "/api/openai/v1/organization/users"),
])
def test_inference_tenants_cannot_reach_stored_data(relay, upstream, token_for,
                                                    governed_tenants, method, path):
    response = call(relay, token_for("gov-inference"), method, path, b"{}")
    assert_refused(response, upstream, 403, ENDPOINT_DENIED)


def test_inference_tenants_keep_inference(relay, upstream, sdk, governed_tenants):
    client = sdk("gov-inference")
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content
    assert [m.id for m in client.models.list()]
    received = upstream.requests
    assert [(r.method, r.path) for r in received] == [
        ("POST", "/v1/chat/completions"), ("GET", "/v1/models")]
    assert received[0].header("authorization") == "Bearer sk-gov-inference-0123456789"


def test_the_sdk_sees_a_permission_error(relay, upstream, sdk, governed_tenants):
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk("gov-inference").files.list()
    assert error.value.status_code == 403
    assert error.value.body == ENDPOINT_DENIED or error.value.response.json() == ENDPOINT_DENIED
    assert upstream.requests == []


@pytest.mark.parametrize("path", [
    "/api/openai/v1/models/../files",
    "/api/openai/v1/models/%2e%2e/files",
    "/api/openai/v1/models/%2E%2E/files",
    "/api/openai/v1/models/.%2e/files",
    "/api/openai//v1/files",
    "/api/openai/v1//files",
    "/api/openai/v1/models/..%2ffiles",
    "/api/openai/v1/models/..%5cfiles",
    "/api/openai/%76%31/files",
    "/api/openai/v1/files/",
    "/api/openai/V1/files",
    "/api/openai/v1/files?x=/v1/models",
    "/api/openai/v1/files#/v1/models",
])
def test_path_tricks_do_not_reach_refused_endpoints(relay, upstream, token_for,
                                                    governed_tenants, path):
    # http.client sends the path verbatim (httpx would resolve the dots itself).
    connection = http.client.HTTPConnection("127.0.0.1", relay.envoy_port, timeout=30)
    try:
        connection.request("GET", path, headers={
            "authorization": f"Bearer {token_for('gov-inference')}"})
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    # Envoy answers escaped slashes itself (400); everything else reaches the policy.
    assert status in (400, 403), (status, body)
    assert json.loads(body) == (BAD_REQUEST if status == 400 else ENDPOINT_DENIED)
    assert upstream.requests == []


def test_a_percent_encoded_allowed_path_is_still_allowed(relay, upstream, token_for,
                                                         governed_tenants):
    connection = http.client.HTTPConnection("127.0.0.1", relay.envoy_port, timeout=30)
    try:
        connection.request("GET", "/api/openai/%76%31/models", headers={
            "authorization": f"Bearer {token_for('gov-inference')}"})
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert len(upstream.requests) == 1


def test_models_outside_the_list_are_refused(relay, upstream, sdk, governed_tenants):
    client = sdk("gov-models")
    with pytest.raises(openai.PermissionDeniedError) as error:
        client.chat.completions.create(model="gpt-4o",
                                       messages=[{"role": "user", "content": "hi"}])
    assert error.value.response.json() == MODEL_DENIED
    assert upstream.requests == []
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert any(chunk.choices for chunk in stream)
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"]


@pytest.mark.parametrize(("body", "status", "expected"), [
    (b'{"model": "gpt-4o-mini", "model": "gpt-4o", "messages": []}', 400, BAD_REQUEST),
    (b'{"model": "gpt-4o-mini", "mod\\u0065l": "gpt-4o", "messages": []}', 400, BAD_REQUEST),
    (b'{"model": "gpt-4o-mini", "temperature": NaN}', 400, BAD_REQUEST),
    (b'{"model": "gpt-4o-mini", "x": "\xff"}', 400, BAD_REQUEST),
    (b'{"model": "gpt-4o-mini"', 400, BAD_REQUEST),
    (b'{"messages": []}', 403, MODEL_DENIED),
    (b'{"model": ["gpt-4o-mini"]}', 403, MODEL_DENIED),
    (b'{"model": "text-embedding-4"}', 403, MODEL_DENIED),
])
def test_bodies_that_cannot_prove_their_model(relay, upstream, token_for, governed_tenants,
                                              body, status, expected):
    response = call(relay, token_for("gov-models"), "POST",
                    "/api/openai/v1/chat/completions", body)
    assert_refused(response, upstream, status, expected)


def test_a_body_too_large_to_inspect_is_refused_under_a_models_policy(
        relay, upstream, token_for, governed_tenants):
    padding = "x" * (16 * 1024 * 1024 + 1024)
    body = json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": padding}]}).encode()
    response = call(relay, token_for("gov-models"), "POST",
                    "/api/openai/v1/chat/completions", body)
    assert_refused(response, upstream, 403, MODEL_DENIED)


def test_large_bodies_of_ungoverned_tenants_still_pass(relay, upstream, token_for):
    body = json.dumps({"model": "any", "input": "y" * (17 * 1024 * 1024)}).encode()
    response = call(relay, token_for("acme"), "POST", "/api/openai/v1/test/echo", body)
    assert response.status_code == 200
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_multipart_upload_still_streams_under_a_models_policy(relay, upstream, sdk,
                                                                governed_tenants):
    size = 20 * 1024 * 1024  # more than ext_authz would buffer: it must not be asked to
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    uploaded = sdk("gov-models").files.create(file=("big.jsonl", io.BytesIO(data)),
                                              purpose="batch")
    assert uploaded.bytes == size
    [received] = upstream.requests
    assert received.complete
    part = next(p for p in received.multipart if p.filename == "big.jsonl")
    assert part.sha256 == hashlib.sha256(data).hexdigest()


def test_a_broken_tenant_policy_fails_closed(relay, upstream, token_for, governed_tenants):
    response = call(relay, token_for("gov-broken"), "POST",
                    "/api/openai/v1/chat/completions", b'{"model": "gpt-4o-mini"}')
    assert_refused(response, upstream, 500, {"error": "OpenAI proxy internal error",
                                             "details": "tenant policy invalid"})
    logs = "\n".join(relay.logs().values())
    assert "modles" in logs
    assert "sk-gov-broken-0123456789" not in logs


def test_the_default_policy_governs_tenants_without_one(make_relay, upstream, token_for):
    relay = make_relay({"AUTHZ_DEFAULT_POLICY": '{"endpoints": "inference"}'})
    response = call(relay, token_for("acme"), "GET", "/api/openai/v1/files")
    assert_refused(response, upstream, 403, ENDPOINT_DENIED)
    response = call(relay, token_for("acme"), "GET", "/api/openai/v1/models")
    assert response.status_code == 200


def test_an_invalid_default_policy_stops_the_service(make_relay):
    with pytest.raises(Exception) as error:  # noqa: PT011 - RelayStack reports a failed start
        make_relay({"AUTHZ_DEFAULT_POLICY": '{"endpoints": "some"}'})
    assert "AUTHZ_DEFAULT_POLICY" in str(error.value)


def test_a_client_keys_own_policy_narrows_its_tenants(relay, upstream, vault, tenants):
    from tests.support.authz_cli import authz_json

    issued = authz_json("keys", "issue", "acme", "--policy", json.dumps({
        "endpoints": ["POST /v1/chat/completions"], "models": ["gpt-4o-mini"]}), env=vault.env)
    client = openai.OpenAI(base_url=relay.api_base, api_key=issued["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as error:
        client.models.list()  # the tenant ("all") allows it; the key does not
    assert error.value.response.json() == ENDPOINT_DENIED
    with pytest.raises(openai.PermissionDeniedError) as error:
        client.chat.completions.create(model="gpt-4o",
                                       messages=[{"role": "user", "content": "hi"}])
    assert error.value.response.json() == MODEL_DENIED
    assert upstream.requests == []
    reply = client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices
    [received] = upstream.requests
    assert received.header("authorization") == "Bearer sk-acme-0123456789abcdefghij"


def test_a_client_cannot_claim_its_body_was_cut(relay, upstream, token_for, governed_tenants):
    # Under a models policy a "cut" body would be refused; a short one claiming to be
    # cut is read as what it is (an allowed model passes, as for anyone).
    response = call(relay, token_for("gov-models"), "POST", "/api/openai/v1/chat/completions",
                    b'{"model": "gpt-4o-mini", "messages": []}',
                    {"x-envoy-auth-partial-body": "true"})
    assert response.status_code == 200, response.text
    [received] = upstream.requests
    assert received.header("x-envoy-auth-partial-body") is None
