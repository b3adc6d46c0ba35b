import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2

from authz.edge.envoy_check import ResponseEncoder, request_headers
from authz.errors import ApiKeyNotFound, AuthenticationFailed, VaultUnavailable
from authz.pipeline.decision import Allow, Deny


def test_request_headers_come_from_the_http_attributes():
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers["authorization"] = "Bearer t"
    request.attributes.request.http.headers[":path"] = "/api/openai/v1/models"
    parsed = external_auth_pb2.CheckRequest.FromString(request.SerializeToString())
    headers = request_headers(parsed)
    assert headers.get("authorization") == "Bearer t"
    assert headers.get("cookie") is None
    assert set(headers.keys()) == {"authorization", ":path"}


def test_allow_overwrites_and_removes_headers_and_records_the_tenant():
    decision = Allow("acme", "firebase", (("authorization", "Bearer sk-acme"),),
                     ("cookie", "x-client-id"))
    response = external_auth_pb2.CheckResponse.FromString(ResponseEncoder().encode(decision))
    assert response.status.code == 0
    ok = response.ok_response
    assert [(h.header.key, h.header.value) for h in ok.headers] == [
        ("authorization", "Bearer sk-acme")
    ]
    assert all(h.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
               for h in ok.headers)
    assert list(ok.headers_to_remove) == ["cookie", "x-client-id"]
    assert response.dynamic_metadata["client_id"] == "acme"
    assert not response.HasField("denied_response")


def test_denials_are_json_with_the_right_status():
    encoder = ResponseEncoder()
    for error, status, rpc in (
        (AuthenticationFailed("x"), 401, 16),
        (ApiKeyNotFound("x"), 500, 7),
        (VaultUnavailable("down: secret detail"), 500, 7),
    ):
        response = external_auth_pb2.CheckResponse.FromString(encoder.encode(Deny(error)))
        assert response.status.code == rpc
        denied = response.denied_response
        assert denied.status.code == status
        assert [(h.header.key, h.header.value) for h in denied.headers] == [
            ("content-type", "application/json")
        ]
        body = json.loads(denied.body)
        assert body == error.body()
        assert "secret detail" not in denied.body


def test_encodings_are_reused():
    encoder = ResponseEncoder()
    decision = Allow("acme", "firebase", (("authorization", "Bearer sk-acme"),), ())
    assert encoder.encode(decision) is encoder.encode(
        Allow("acme", "firebase", (("authorization", "Bearer sk-acme"),), ()))


def test_check_input_reads_method_path_body_and_the_partial_flag():
    from authz.edge.envoy_check import check_input

    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "POST", "/api/openai/v1/chat/completions?x=1"
    http.headers["authorization"] = "Bearer t"
    http.raw_body = b'{"model": "m", "x": "\xff"}'
    parsed = check_input(external_auth_pb2.CheckRequest.FromString(request.SerializeToString()))
    assert (parsed.method, parsed.path) == ("POST", "/api/openai/v1/chat/completions?x=1")
    assert parsed.body == b'{"model": "m", "x": "\xff"}'
    assert not parsed.body_partial
    http.ClearField("raw_body")
    http.body = '{"model": "é"}'
    http.headers["x-envoy-auth-partial-body"] = "true"
    parsed = check_input(request)
    assert parsed.body == '{"model": "é"}'.encode()
    assert parsed.body_partial
    del http.headers["x-envoy-auth-partial-body"]
    assert not check_input(request).body_partial
    http.size = 10_000  # Content-Length: more than Envoy sent, so it is a part
    assert check_input(request).body_partial
    http.size = -1  # unknown (chunked)
    assert not check_input(request).body_partial
    http.ClearField("body")
    http.headers["x-envoy-auth-partial-body"] = "true"
    assert not check_input(request).body_partial  # no body: nothing was cut
    assert check_input(request).body is None


def test_governance_denials_carry_their_status_body_and_retry_after():
    from authz.errors import (
        BadRequest,
        EndpointNotAllowed,
        ModelNotAllowed,
        RateLimitExceeded,
        TokenBudgetExhausted,
    )

    encoder = ResponseEncoder()
    for error, status, body, retry in (
        (BadRequest(), 400, {"error": "Bad request"}, None),
        (EndpointNotAllowed(), 403, {"error": "Endpoint not allowed"}, None),
        (ModelNotAllowed(), 403, {"error": "Model not allowed"}, None),
        (RateLimitExceeded("user_requests_per_minute", 17), 429,
         {"error": "Rate limit exceeded", "details": "user_requests_per_minute"}, "17"),
        (TokenBudgetExhausted("tenant_tokens_per_day", 3600), 429,
         {"error": "Token budget exhausted", "details": "tenant_tokens_per_day"}, "3600"),
    ):
        response = external_auth_pb2.CheckResponse.FromString(encoder.encode(Deny(error)))
        assert response.status.code == 7  # PERMISSION_DENIED
        denied = response.denied_response
        assert denied.status.code == status
        assert json.loads(denied.body) == body
        headers = {h.header.key: h.header.value for h in denied.headers}
        assert headers["content-type"] == "application/json"
        assert headers.get("retry-after") == retry
    # Another Retry-After is another encoding, not a stale cached one.
    response = external_auth_pb2.CheckResponse.FromString(
        encoder.encode(Deny(RateLimitExceeded("user_requests_per_minute", 5))))
    assert {h.header.key: h.header.value for h in response.denied_response.headers}[
        "retry-after"] == "5"


def test_allow_metadata_carries_user_lease_reservation_and_injection():
    encoder = ResponseEncoder()
    plain = Allow("acme", "firebase", (), (), user="u1")
    metadata = external_auth_pb2.CheckResponse.FromString(encoder.encode(plain)).dynamic_metadata
    assert dict(metadata) == {"client_id": "acme", "token_type": "firebase", "user": "u1"}
    governed = Allow("acme", "client_key", (), (), user="ck_1", lease="L1",
                     reserved_tokens=1200, inject_usage=True)
    metadata = external_auth_pb2.CheckResponse.FromString(
        encoder.encode(governed)).dynamic_metadata
    assert metadata["lease"] == "L1"
    assert metadata["reserved_tokens"] == 1200
    assert metadata["inject_usage"] == "1"
    assert metadata["user"] == "ck_1"
    # Leases are per request: never cached; plain decisions are.
    assert governed not in encoder._allow
    assert plain in encoder._allow


@pytest.mark.parametrize(("lease", "reserved"), [
    ("l0123abcd1", 0), ("r" + "f" * 200, 1040), ("l1", 10**13), ("lé", 7)])
def test_a_leased_encoding_equals_the_whole_message_built_at_once(lease, reserved):
    """The shared part is cached and the lease appended by hand: Envoy must read the
    same message as one built field by field (a parser merges the repeated Struct)."""
    decision = Allow("acme", "firebase", (("authorization", "Bearer sk-x"),), ("cookie",),
                     user="u1", lease=lease, reserved_tokens=reserved)
    encoder = ResponseEncoder()
    for _ in range(2):  # cold, then from the cache
        got = external_auth_pb2.CheckResponse.FromString(encoder.encode(decision))
        want = external_auth_pb2.CheckResponse()
        want.status.code = 0
        header = want.ok_response.headers.add()
        header.header.key, header.header.value = "authorization", "Bearer sk-x"
        header.append_action = header.OVERWRITE_IF_EXISTS_OR_ADD
        want.ok_response.headers_to_remove.append("cookie")
        want.dynamic_metadata.update({"client_id": "acme", "token_type": "firebase",
                                      "user": "u1", "lease": lease,
                                      "reserved_tokens": reserved})
        assert got == want
