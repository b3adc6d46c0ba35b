import json

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
