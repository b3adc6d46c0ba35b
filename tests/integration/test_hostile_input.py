"""Hostile input against the real stack: every bad token, header, request line and path ends
in the contract's JSON (or Envoy's JSON for protocol errors) and forwards nothing upstream;
whatever is forwarded carries the caller's own tenant key and the fixed upstream host.

Requests that an HTTP client library would refuse or normalise (CR/LF in values, two
Authorization headers, `..` in paths, absolute-form targets, CONNECT, smuggling) are sent
as raw bytes on a socket, so Envoy sees exactly what an attacker would send.

Extends test_auth.py, test_headers.py and test_routes.py (which are not repeated here).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.firebase import b64url_encode
from tests.support.processes import memory_kb

pytestmark = pytest.mark.integration

AUTH_FAILED = {"error": "Authentication failed"}
CLIENT_ID_NOT_FOUND = {"error": "Client ID not found"}
NOT_FOUND = {"error": "Not found"}
BAD_REQUEST = {"error": "Bad request"}
TOO_LARGE = {"error": "Request header fields too large"}


# --------------------------------------------------------------------------- raw HTTP/1.1


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def json(self) -> object:
        return json.loads(self.body)


def _read_line(f) -> bytes:
    line = f.readline(128 * 1024)
    if not line:
        raise ConnectionError("connection closed")
    return line


def read_response(f) -> RawResponse:
    """One HTTP/1.1 response from a socket file, skipping 1xx interim responses."""
    while True:
        status = int(_read_line(f).split(b" ", 2)[1])
        headers = []
        while (line := _read_line(f).rstrip(b"\r\n")) != b"":
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        if status >= 200:
            break
    response = RawResponse(status, headers)
    length = response.header("content-length")
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        chunks = []
        while (size := int(_read_line(f).split(b";")[0], 16)) != 0:
            chunks.append(f.read(size))
            f.read(2)
        while _read_line(f).strip():
            pass
        response.body = b"".join(chunks)
    elif length is not None:
        response.body = f.read(int(length))
    elif (response.header("connection") or "").lower() == "close":
        response.body = f.read()
    return response


def raw_exchange(port: int, data: bytes, responses: int = 1, timeout: float = 15.0
                 ) -> list[RawResponse]:
    """Send raw bytes, read up to `responses` responses (fewer if the relay closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        got: list[RawResponse] = []
        with sock.makefile("rb") as f:
            for _ in range(responses):
                try:
                    got.append(read_response(f))
                except (ConnectionError, OSError, ValueError, IndexError):
                    break
        return got


def request_bytes(target: str | bytes, headers: list[tuple[str, str] | bytes] = (),
                  method: bytes = b"GET", body: bytes = b"", host: bytes = b"relay.test",
                  version: bytes = b"HTTP/1.1") -> bytes:
    """A request head built from parts; bytes items in `headers` go out verbatim."""
    target = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method + b" " + target + b" " + version]
    if host:
        lines.append(b"Host: " + host)
    for h in headers:
        lines.append(h if isinstance(h, bytes) else f"{h[0]}: {h[1]}".encode("latin-1"))
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def one(relay, data: bytes) -> RawResponse:
    [response] = raw_exchange(relay.envoy_port, data)
    return response


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def assert_refused(response: RawResponse | httpx.Response, upstream, status: int, body: dict):
    code = response.status if isinstance(response, RawResponse) else response.status_code
    assert code == status, (code, response.headers, getattr(response, "body", b""))
    headers = response.headers if isinstance(response, RawResponse) else response.headers.items()
    names = {k.lower() for k, _ in headers}
    assert dict(headers)["content-type"] == "application/json"
    assert response.json() == body
    assert "server" not in names
    assert not any(name.startswith("x-envoy") for name in names)
    assert upstream.requests == []


def upstream_authority(upstream) -> str:
    return upstream.url.removeprefix("https://")


# --------------------------------------------------------------------------- tokens


def _rs256_sign(key: rsa.RSAPrivateKey, header: dict, claims: dict) -> str:
    head = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    body = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{head}.{body}".encode()
    sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64url_encode(sig)}"


def _int_b64(n: int) -> str:
    return b64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@pytest.fixture(scope="module")
def rogue_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_a_valid_token_under_another_scheme_is_refused(relay, upstream, token_for):
    token = token_for("acme")
    for scheme in ("Token", "JWT", "Firebase", "Basic", "Bearer:", "BearerX"):
        response = one(relay, request_bytes("/api/openai/v1/models",
                                            [("Authorization", f"{scheme} {token}")]))
        assert_refused(response, upstream, 401, AUTH_FAILED)


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer ",
        b"Bearer    ",
        b"Bearer Bearer",
        b"Bearer \xff\xfe\xc3\x28not-utf8",
        b"Bearer eyJ\xe9.eyJ\xe9.sig",
        b"Bearer a.b",
        b"Bearer a.b.c.d.e",
        b"Bearer ..",
        b"Bearer " + b"A" * (40 * 1024),
        b"Bearer e30.e30.",
        b"Bearer " + b"%2e" * 30,
        b"Bearer {\"alg\":\"none\"}",
    ],
    ids=["empty", "blank", "scheme-twice", "not-utf8", "not-utf8-jwt", "two-segments",
         "jwe-shape", "dots", "40kb", "empty-json", "percent", "raw-json"],
)
def test_malformed_credentials(relay, upstream, authorization):
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [b"Authorization: " + authorization]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


def test_a_64kb_token_is_refused_by_the_header_limit(relay, upstream):
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [("Authorization", "Bearer " + "A" * 65536)]))
    assert_refused(response, upstream, 431, TOO_LARGE)


def test_truncations_of_a_valid_token(relay, upstream, token_for):
    token = token_for("acme")
    head, payload, sig = token.split(".")
    for bad in (token[:-1], token[:-40], f"{head}.{payload}.", f"{head}.{payload}",
                f"{head}..{sig}", f".{payload}.{sig}", token[: len(token) // 2],
                f"{head}.{payload}.{sig}.{sig}", token + "A"):
        response = one(relay, request_bytes("/api/openai/v1/models", [bearer(bad)]))
        assert_refused(response, upstream, 401, AUTH_FAILED)


def test_a_nul_inside_the_token_is_a_protocol_error(relay, upstream, token_for):
    token = token_for("acme").encode()
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [b"Authorization: Bearer " + token[:20] + b"\x00"
                                         + token[20:]]))
    assert_refused(response, upstream, 400, BAD_REQUEST)


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES256", "HS256", "HS512", "none", "None",
                                 "nOnE", "", "rs256", None])
def test_only_rs256_is_accepted(relay, upstream, firebase, alg):
    header = {"alg": alg} if alg is not None else {}
    token = firebase.mint(None, "user-1", "acme", header=header,
                          remove_header=() if alg is not None else ("alg",))
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


@pytest.mark.parametrize("embedded", ["jwk", "jku", "x5u", "x5c"])
def test_keys_named_inside_the_token_are_never_trusted(relay, upstream, firebase, rogue_key,
                                                       embedded):
    numbers = rogue_key.public_key().public_numbers()
    header = {"alg": "RS256", "typ": "JWT", "kid": firebase.default_kid}
    header[embedded] = {
        "jwk": {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e),
                "kid": firebase.default_kid},
        "jku": "http://127.0.0.1:9/keys.json",
        "x5u": "http://127.0.0.1:9/cert.pem",
        "x5c": [base64.b64encode(b"not a cert").decode()],
    }[embedded]
    token = _rs256_sign(rogue_key, header, firebase.claims(None, "user-1", "acme"))
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


@pytest.mark.parametrize("kid", ["../../../../dev/null", "", " ", 7, ["a"], {"a": 1}, None,
                                 "x" * 2000, "kid\u0000"])
def test_hostile_kids(relay, upstream, firebase, kid):
    token = firebase.mint(None, "user-1", "acme", header={"kid": kid})
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


def test_a_payload_swapped_in_from_another_token_is_refused(relay, upstream, token_for):
    acme_head, _, acme_sig = token_for("acme").split(".")
    _, globex_payload, _ = token_for("globex").split(".")
    token = f"{acme_head}.{globex_payload}.{acme_sig}"
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


def test_a_tampered_token_naming_another_tenant_is_refused(relay, upstream, token_for):
    token = token_for("acme", variant="tampered", tamper={"clientId": "globex"})
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


NOW = time.time()


@pytest.mark.parametrize(
    "mint_kwargs",
    [
        {"exp": int(NOW - 120)},
        {"exp": str(int(NOW + 3600))},
        {"exp": True},
        {"remove": ["exp"]},
        {"remove": ["iat"]},
        {"remove": ["auth_time"]},
        {"iat": str(int(NOW))},
        {"nbf": int(NOW + 3600)},
        {"nbf": "soon"},
        {"aud": ["demo-relay", "other"]},
        {"aud": None},
        {"iss": "https://securetoken.google.com/demo-relay/"},
        {"iss": "http://securetoken.google.com/demo-relay"},
        {"sub": "x" * 129},
        {"sub": 12345},
        {"sub": None},
        {"remove": ["sub"]},
    ],
    ids=["expired", "exp-string", "exp-bool", "no-exp", "no-iat", "no-auth-time",
         "iat-string", "nbf-future", "nbf-string", "aud-list", "aud-null", "iss-slash",
         "iss-http", "sub-129", "sub-number", "sub-null", "no-sub"],
)
def test_claims_that_are_stale_or_malformed(relay, upstream, token_for, mint_kwargs):
    token = token_for("acme", **mint_kwargs)
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


def test_a_128_character_subject_is_still_accepted(relay, upstream, token_for, tenants):
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [bearer(token_for("acme", uid="u" * 128))]))
    assert response.status == 200
    [received] = upstream.requests
    assert received.header_values("authorization") == [f"Bearer {tenants['acme'].api_key}"]


HOSTILE_CLIENT_IDS = [
    {"a": 1}, True, 0.5, "acme%2Fglobex", "acme%2fglobex", "%2e%2e", "acme/../globex",
    "acme\u0000globex", "acme\x00", "..", ".", "acme/", "/acme", "acme\\globex", "acme?x=1",
    "acme#x", " acme", "acme ", "acme\n", "acme\r\nx-client-id: globex", "\uff41\uff43\uff4d\uff45",
    "\u0430cme", "a" * 129, "acme..globex", "-acme", "_acme", "acme;globex", "acme%00",
    "{client_id}", "../../sys/policy/root", "acme\tx",
]


@pytest.mark.parametrize("client_id", HOSTILE_CLIENT_IDS, ids=repr)
def test_hostile_client_ids_never_reach_vault(relay, upstream, firebase, client_id):
    token = firebase.mint(None, "user-x", None, clientId=client_id)
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    # "Client ID not found" is decided before any Vault read ("key not found" would
    # mean the value had been used as a path).
    assert_refused(response, upstream, 500, CLIENT_ID_NOT_FOUND)


@pytest.mark.parametrize("tenant", ["../globex", "a/b", "globex%2F..", "", 5, ["globex"]],
                         ids=repr)
def test_hostile_firebase_tenant_claims(relay, upstream, firebase, tenant):
    token = firebase.mint(None, "user-x", None, tenant=tenant)
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 500, CLIENT_ID_NOT_FOUND)


def test_a_hostile_client_id_does_not_fall_through_to_a_valid_tenant_claim(
    relay, upstream, firebase
):
    token = firebase.mint(None, "user-x", None, tenant="globex", clientId="../globex")
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 500, CLIENT_ID_NOT_FOUND)


def test_tokens_in_other_places_than_the_authorization_header_are_ignored(
    relay, upstream, token_for
):
    token = token_for("acme")
    for data in (
        request_bytes(f"/api/openai/v1/models?access_token={token}"),
        request_bytes("/api/openai/v1/models", [("Cookie", f"token={token}")]),
        request_bytes("/api/openai/v1/models", [("X-Api-Key", token)]),
        request_bytes("/api/openai/v1/models", [("Proxy-Authorization", f"Bearer {token}")]),
    ):
        assert_refused(one(relay, data), upstream, 401, AUTH_FAILED)


# --------------------------------------------------------------------------- headers


def test_two_authorization_headers_are_refused(relay, upstream, token_for):
    acme, globex = token_for("acme"), token_for("globex")
    for pair in ((acme, "garbage"), ("garbage", acme), (acme, globex), (acme, acme)):
        response = one(relay, request_bytes("/api/openai/v1/models",
                                            [bearer(pair[0]), bearer(pair[1])]))
        assert_refused(response, upstream, 401, AUTH_FAILED)


def test_two_authorization_headers_over_h2_are_refused(relay, upstream, token_for):
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        response = client.get(relay.api_base + "/models", headers=[
            ("authorization", f"Bearer {token_for('acme')}"),
            ("authorization", f"Bearer {token_for('globex')}"),
        ])
    assert response.http_version == "HTTP/2"
    assert_refused(response, upstream, 401, AUTH_FAILED)


TENANT_NAMING_HEADERS = [
    ("X-Client-Id", "globex"), ("X-Tenant-Id", "globex"), ("X-Relay-Client-Id", "globex"),
    ("X-Relay-Tenant", "globex"), ("X-Relay-Key", "sk-forged"), ("x_client_id", "globex"),
    ("x_tenant_id", "globex"), ("X-CLIENT-ID", "globex"), ("X-Forwarded-User", "globex"),
    ("X-Forwarded-For", "10.0.0.1"), ("X-Original-Forwarded-For", "10.0.0.1"),
    ("Forwarded", "for=10.0.0.1;host=evil"), ("X-Real-IP", "10.0.0.1"),
    ("X-Envoy-Original-Path", "/admin"), ("X-Envoy-Upstream-Rq-Timeout-Ms", "1"),
    ("X-Envoy-Retry-On", "5xx"), ("X-Envoy-Max-Retries", "50"),
    ("X-Envoy-Internal", "true"), ("X-Envoy-Decorator-Operation", "x"),
    ("Proxy-Authorization", "Basic eDp5"), ("X-Api-Key", "sk-client"), ("Cookie", "a=b"),
]


def test_headers_naming_a_tenant_or_a_route_are_dropped(relay, upstream, token_for, tenants):
    response = one(relay, request_bytes("/api/openai/v1/test/echo",
                                        [bearer(token_for("acme")), *TENANT_NAMING_HEADERS]))
    assert response.status == 200
    [received] = upstream.requests
    assert received.header_values("authorization") == [f"Bearer {tenants['acme'].api_key}"]
    names = received.header_names()
    assert names <= {"host", "authorization", "x-original-forwarded-for"}, names
    assert received.header("host") == upstream_authority(upstream)
    assert "globex" not in repr(received.headers)


def test_bare_lf_cannot_smuggle_a_header_past_the_checks(relay, upstream, token_for, tenants):
    token = token_for("acme").encode()
    response = one(relay, request_bytes("/api/openai/v1/test/echo", [
        b"X-Foo: a\nX-Client-Id: globex\nX-Api-Key: sk-smuggled",
        b"Authorization: Bearer " + token,
    ]))
    assert response.status == 200
    [received] = upstream.requests
    assert received.header_values("authorization") == [f"Bearer {tenants['acme'].api_key}"]
    assert not {"x-client-id", "x-api-key"} & received.header_names()
    assert all("\n" not in v and "\r" not in v for _, v in received.headers)


def test_bare_lf_cannot_smuggle_a_second_authorization(relay, upstream, token_for):
    token = token_for("acme").encode()
    response = one(relay, request_bytes("/api/openai/v1/models", [
        b"X-Foo: a\nAuthorization: Bearer garbage", b"Authorization: Bearer " + token]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


def test_bare_cr_and_folded_lines_never_reach_the_upstream_raw(relay, upstream, token_for):
    token = token_for("acme").encode()
    for header in (b"X-Foo: a\rX-Client-Id: globex", b"X-Foo: a\r\n X-Client-Id: globex",
                   b"X-Foo: a\r\n\tAuthorization: Bearer x"):
        upstream.clear()
        response = one(relay, request_bytes("/api/openai/v1/test/echo",
                                            [header, b"Authorization: Bearer " + token]))
        assert response.status in (200, 400), response
        for received in upstream.requests:
            assert "x-client-id" not in received.header_names()
            assert len(received.header_values("authorization")) == 1
            assert all("\r" not in v and "\n" not in v for _, v in received.headers)


@pytest.mark.parametrize("bad", [b"X-Foo: a\x00b", b"X-Foo : a", b"X Foo: a", b"X-Foo\x7f: a",
                                 b": empty-name", b"X-Foo"])
def test_malformed_header_lines_are_400_json(relay, upstream, token_for, bad):
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [bad, bearer(token_for("acme"))]))
    assert_refused(response, upstream, 400, BAD_REQUEST)


def test_an_oversized_header_is_431_json(relay, upstream, token_for):
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [("X-Big", "a" * 70_000), bearer(token_for("acme"))]))
    assert_refused(response, upstream, 431, TOO_LARGE)


def test_many_small_headers_adding_up_past_the_limit_are_431_json(relay, upstream, token_for):
    headers = [(f"X-H{i}", "v" * 900) for i in range(80)]
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [*headers, bearer(token_for("acme"))]))
    assert_refused(response, upstream, 431, TOO_LARGE)


@pytest.mark.parametrize("count", [101, 300, 1000])
def test_hundreds_of_headers_are_431_json(relay, upstream, token_for, count):
    headers = [(f"X-H{i}", "v") for i in range(count)]
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [*headers, bearer(token_for("acme"))]))
    assert_refused(response, upstream, 431, TOO_LARGE)


def test_ninety_hostile_headers_under_the_limit_are_all_stripped(
    relay, upstream, token_for, tenants
):
    names = ["x-client-id", "x-tenant-id", "x-forwarded-for", "x-envoy-foo", "x-relay-a",
             "cookie", "x-api-key", "forwarded", "x-real-ip"]
    headers = [(f"{names[i % len(names)]}{'' if i < len(names) else f'-{i}'}", f"globex-{i}")
               for i in range(90)]
    response = one(relay, request_bytes("/api/openai/v1/test/echo",
                                        [*headers, bearer(token_for("acme"))]))
    assert response.status == 200
    [received] = upstream.requests
    assert received.header_values("authorization") == [f"Bearer {tenants['acme'].api_key}"]
    leaked = {n for n in received.header_names()
              if n in names or n.startswith(("x-forwarded-", "x-envoy-", "x-relay-"))}
    assert not leaked


# --------------------------------------------------------------------------- request lines


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        (b"/api/openai/v1\\models", "/v1/models"),
        (b"/api/openai\\v1\\models", "/v1/models"),
        (b"/api/openai/./v1/./models", "/v1/models"),
        (b"//api/openai/v1/models", "/v1/models"),
        (b"/api//openai///v1/models", "/v1/models"),
        (b"/api/openai/v1/x/%2E%2E/models", "/v1/models"),
        (b"/api/openai/v1/x/.%2e/models", "/v1/models"),
        (b"/api/openai/v1/x/%2e./models", "/v1/models"),
        (b"/api/openai/v1/x/..\\models", "/v1/models"),
        (b"/api/open%61i/v1/m%6Fdels", "/v1/models"),  # unreserved: decoded
        # Encodings Envoy does not decode stay literal, inside the prefix.
        (b"/api/openai/v1/%252e%252e/%252e%252e/admin", "/v1/%252e%252e/%252e%252e/admin"),
        (b"/api/openai/%c0%ae%c0%ae/admin", "/%c0%ae%c0%ae/admin"),
        (b"/api/openai?../../admin", "/v1/responses?../../admin"),
    ],
)
def test_paths_normalised_inside_the_prefix_are_forwarded_there(
    relay, upstream, token_for, target, forwarded
):
    response = one(relay, request_bytes(target, [bearer(token_for("acme"))]))
    assert response.status in (200, 404), response
    [received] = upstream.requests
    assert received.target == forwarded
    assert received.header("host") == upstream_authority(upstream)


@pytest.mark.parametrize(
    "target",
    [
        b"/api/openai\\..\\admin",
        b"/api/openai/..\\..\\admin",
        b"/api/openai/v1/%2E%2E/%2e%2e/%2E./admin",
        b"/api/openai/..;/admin",
        b"/api/openai/v1/../../../../../etc/passwd",
        b"/api/openai/%2e%2e",
        b"/api/openaiv1/models",
        b"/.%2e/api/openai/v1/models/../../../../admin",
        b"/api/openai/..",
    ],
)
def test_paths_escaping_the_prefix_are_404_json(relay, upstream, token_for, target):
    response = one(relay, request_bytes(target, [bearer(token_for("acme"))]))
    assert_refused(response, upstream, 404, NOT_FOUND)


@pytest.mark.parametrize(
    "target",
    [
        b"/api/openai/%2F..%2F..%2Fadmin",
        b"/api/openai/v1%2f..%2f..%2fadmin",
        b"/api/openai/v1%5C..%5Cadmin",
        b"/api/openai/v1/models%00",
        b"/api/openai/v1/mo dels",
        b"/api/openai/v1/a\tb",
        b"/api/openai/v1/caf\xc3\xa9",
        b"/api/openai/v1/models#/../../admin",
        b"api/openai/v1/models",
        b"/api/openai/v1/\x01",
    ],
)
def test_malformed_or_escaped_paths_are_400_json(relay, upstream, token_for, target):
    response = one(relay, request_bytes(target, [bearer(token_for("acme"))]))
    assert_refused(response, upstream, 400, BAD_REQUEST)


def test_absolute_form_targets_cannot_change_the_upstream(relay, upstream, token_for, tenants):
    for target in (b"http://elsewhere.example/api/openai/v1/test/echo",
                   b"http://elsewhere.example:8443/api/openai/v1/test/echo",
                   b"http://user:pw@elsewhere.example/api/openai/v1/test/echo",
                   b"http://127.0.0.1:1/api/openai/v1/test/echo"):
        upstream.clear()
        response = one(relay, request_bytes(target, [bearer(token_for("acme"))],
                                            host=b"elsewhere.example"))
        assert response.status == 200, target
        [received] = upstream.requests
        assert received.target == "/v1/test/echo"
        assert received.header("host") == upstream_authority(upstream)
        assert received.header_values("authorization") == [f"Bearer {tenants['acme'].api_key}"]


def test_absolute_form_targets_outside_the_prefix_are_404_json(relay, upstream, token_for):
    for target in (b"http://elsewhere.example/admin",
                   b"http://elsewhere.example/api/openai/../../admin"):
        response = one(relay, request_bytes(target, [bearer(token_for("acme"))]))
        assert_refused(response, upstream, 404, NOT_FOUND)


def test_an_https_absolute_target_on_plain_http_is_refused_with_json(relay, upstream, token_for):
    response = one(relay, request_bytes(b"https://elsewhere.example/api/openai/v1/models",
                                        [bearer(token_for("acme"))]))
    assert_refused(response, upstream, 403, {"error": "Forbidden"})


@pytest.mark.parametrize("authority", [b"elsewhere.example:443", b"127.0.0.1:22",
                                       b"localhost:8200", b"api.openai.com:443"])
def test_connect_is_never_tunnelled(relay, upstream, token_for, authority):
    for headers in ([bearer(token_for("acme"))], []):
        response = one(relay, request_bytes(authority, headers, method=b"CONNECT",
                                            host=authority))
        assert_refused(response, upstream, 404, NOT_FOUND)


def test_connect_over_h2_is_never_tunnelled(relay, upstream, token_for):
    import h2.config
    import h2.connection
    import h2.events

    with socket.create_connection(("127.0.0.1", relay.envoy_port), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "CONNECT"), (":authority", "elsewhere.example:443"),
                              ("authorization", f"Bearer {token_for('acme')}")],
                          end_stream=False)
        sock.sendall(conn.data_to_send())
        status = None
        deadline = time.monotonic() + 10
        while status is None and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    status = b"reset"
            sock.sendall(conn.data_to_send())
    assert status in (b"404", b"400", b"403", b"reset"), status
    assert upstream.requests == []


def test_host_and_authority_naming_other_hosts_are_replaced(relay, upstream, token_for):
    token = token_for("acme")
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        response = client.get(relay.api_base + "/test/echo",
                              headers={"host": "evil.example", "authorization": f"Bearer {token}"})
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    for data in (request_bytes("/api/openai/v1/test/echo", [bearer(token)],
                               host=b"user:pw@evil.example"),
                 request_bytes("/api/openai/v1/test/echo", [bearer(token), ("Host", "evil2")]),
                 request_bytes("/api/openai/v1/test/echo",
                               [bearer(token), ("X-Forwarded-Host", "evil3")])):
        assert one(relay, data).status == 200
    received = upstream.requests
    assert len(received) == 4
    assert {r.header("host") for r in received} == {upstream_authority(upstream)}
    assert all(len(r.header_values("host")) == 1 for r in received)


def test_options_star_is_404_json(relay, upstream, token_for):
    response = one(relay, request_bytes(b"*", [bearer(token_for("acme"))], method=b"OPTIONS"))
    assert_refused(response, upstream, 404, NOT_FOUND)


def test_websocket_upgrades_are_refused_with_json(relay, upstream, token_for):
    for target in (b"/api/openai/v1/realtime?model=gpt-4o-realtime-preview", b"/admin"):
        response = one(relay, request_bytes(target, [
            bearer(token_for("acme")), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]))
        assert_refused(response, upstream, 403, {"error": "Forbidden"})


@pytest.mark.parametrize(
    ("data", "status", "body"),
    [
        (b"GET /api/openai/v1/models HTTP/1.0\r\n\r\n", 426, {"error": "Upgrade required"}),
        (b"GET /api/openai/v1/models HTTP/1.2\r\nHost: x\r\n\r\n", 426,
         {"error": "Upgrade required"}),
        (b"GET /api/openai/v1/models HTTP/1.1\r\n\r\n", 400, BAD_REQUEST),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64, 400, BAD_REQUEST),
        (b"G\x00T /api/openai/v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 400, BAD_REQUEST),
        (b"FOO /api/openai/v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 400, BAD_REQUEST),
        (b"X" * 5000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n", 400, BAD_REQUEST),
        (b"GET /api/openai/v1/models?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431,
         TOO_LARGE),
    ],
    ids=["http1.0", "http1.2", "no-host", "tls-hello", "nul-method", "unknown-method",
         "long-method", "70kb-url"],
)
def test_malformed_request_lines_are_json(relay, upstream, data, status, body):
    assert_refused(one(relay, data), upstream, status, body)


@pytest.mark.parametrize(
    ("framing", "status", "body"),
    [
        ([("Content-Length", "4"), ("Transfer-Encoding", "chunked")], 400, BAD_REQUEST),
        ([("Content-Length", "4"), ("Content-Length", "5")], 400, BAD_REQUEST),
        ([("Content-Length", "-1")], 400, BAD_REQUEST),
        ([("Content-Length", "0x10")], 400, BAD_REQUEST),
        ([("Transfer-Encoding", "identity"), ("Content-Length", "4")], 400, BAD_REQUEST),
        ([("Transfer-Encoding", "gzip, chunked")], 501, {"error": "Not implemented"}),
    ],
    ids=["cl+te", "two-cl", "negative-cl", "hex-cl", "te-identity", "te-gzip-chunked"],
)
def test_ambiguous_body_framing_is_refused(relay, upstream, token_for, framing, status, body):
    data = request_bytes("/api/openai/v1/test/echo", [bearer(token_for("acme")), *framing],
                         method=b"POST") + b"abcde"
    assert_refused(one(relay, data), upstream, status, body)


def test_a_pipelined_request_is_checked_on_its_own(relay, upstream, token_for):
    token = token_for("acme")
    first = request_bytes("/api/openai/v1/test/echo?first", [bearer(token)], method=b"POST",
                          body=b"{}")
    second = request_bytes("/api/openai/v1/test/echo?second")
    responses = raw_exchange(relay.envoy_port, first + second, responses=2)
    assert [r.status for r in responses] == [200, 401]
    assert responses[1].json() == AUTH_FAILED
    assert [r.target for r in upstream.requests] == ["/v1/test/echo?first"]


def test_a_request_smuggled_in_a_chunked_body_is_checked_on_its_own(relay, upstream, token_for):
    smuggled = request_bytes("/api/openai/v1/test/echo?smuggled")
    data = (request_bytes("/api/openai/v1/test/echo?first",
                          [bearer(token_for("acme")), ("Transfer-Encoding", "chunked")],
                          method=b"POST")
            + b"0\r\n\r\n" + smuggled)
    responses = raw_exchange(relay.envoy_port, data, responses=2)
    assert [r.status for r in responses] == [200, 401]
    assert [r.target for r in upstream.requests] == ["/v1/test/echo?first"]


def test_a_denied_upload_is_refused_before_its_body_is_sent(relay, upstream):
    head = (b"POST /api/openai/v1/files HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 104857600\r\n"
            b"Authorization: Bearer not-a-token\r\n\r\n")
    with socket.create_connection(("127.0.0.1", relay.envoy_port), timeout=10) as sock:
        sock.sendall(head + b"x" * 1024)
        with sock.makefile("rb") as f:
            response = read_response(f)
    assert_refused(response, upstream, 401, AUTH_FAILED)


# --------------------------------------------------------------------------- bodies (soak)




class RssSampler:
    """Samples VmRSS of some PIDs every 50 ms in a thread; .peak_kb per PID."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak_kb = {name: memory_kb(pid)["VmRSS"] for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for name, pid in self.pids.items():
                self.peak_kb[name] = max(self.peak_kb[name], memory_kb(pid)["VmRSS"])

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


UPLOAD_BYTES = 100 * 1024 * 1024
# Envoy streams with flow control (1 MiB per-connection buffers): a 100 MiB body must not
# grow it by more than a small fraction of itself. authz never sees a body at all.
# (measured here: Envoy +2.3 MB, authz +0.02 MB).
ENVOY_UPLOAD_GROWTH_BOUND_KB = 16 * 1024
AUTHZ_UPLOAD_GROWTH_BOUND_KB = 8 * 1024


@pytest.mark.soak
def test_a_100mb_upload_streams_through_with_flat_memory(make_relay, upstream, token_for):
    relay = make_relay()
    token = token_for("acme")
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()

    def body():
        yield head
        for i in range(UPLOAD_BYTES // len(block)):
            chunk = block[i % 7:] + block[: i % 7]  # vary the blocks cheaply
            digest.update(chunk)
            yield chunk
        yield tail

    # Warm the path first so the baseline includes connection pools and caches.
    with httpx.Client(timeout=60) as client:
        assert client.get(relay.api_base + "/models",
                          headers={"authorization": f"Bearer {token}"}).status_code == 200
    upstream.clear()
    pids = {"envoy": relay.envoy.pid, "authz": relay.authz.pid}
    before = {name: memory_kb(pid) for name, pid in pids.items()}
    started = time.monotonic()
    with RssSampler(pids) as sampler, httpx.Client(timeout=120) as client:
        response = client.post(
            relay.api_base + "/files", content=body(),
            headers={"authorization": f"Bearer {token}",
                     "content-type": f"multipart/form-data; boundary={boundary}"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == UPLOAD_BYTES
    assert response.headers["x-test-file-sha256"] == digest.hexdigest()
    [received] = upstream.requests
    assert received.complete
    growth = {name: sampler.peak_kb[name] - before[name]["VmRSS"] for name in pids}
    print(f"\n100 MiB upload in {elapsed:.1f}s; RSS before (kB) "
          f"{ {n: v['VmRSS'] for n, v in before.items()} }, peak growth (kB) {growth}")
    assert growth["envoy"] < ENVOY_UPLOAD_GROWTH_BOUND_KB, growth
    assert growth["authz"] < AUTHZ_UPLOAD_GROWTH_BOUND_KB, growth


# --------------------------------------------------------------------------- one spelling


def _respelled(token: str, how: str) -> str:
    head, body, sig = token.split(".")
    if how == "signature-padding":
        return f"{head}.{body}.{sig}{'=' * (-len(sig) % 4) or '===='}"
    if how == "signature-std-alphabet":
        assert "-" in sig or "_" in sig
        return f"{head}.{body}.{sig.replace('-', '+').replace('_', '/')}"
    raise AssertionError(how)


# (Padding inside the token is already refused by the bearer syntax, RFC 6750 b64token.)
@pytest.mark.parametrize("how", ["signature-padding", "signature-std-alphabet"])
def test_another_spelling_of_a_valid_token_is_refused(relay, upstream, token_for, how):
    """Each spelling would be a new identity-cache entry and an RSA check (issue 11, 5)."""
    for attempt in range(20):  # a signature with a '-' or '_' in it, and padding to add
        token = token_for("acme", uid=f"spelling-{attempt}")
        sig = token.split(".")[2]
        if ("-" in sig or "_" in sig) and len(sig) % 4:
            break
    assert one(relay, request_bytes("/api/openai/v1/models", [bearer(token)])).status == 200
    upstream.clear()
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [bearer(_respelled(token, how))]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


@pytest.mark.parametrize("claims", [{"exp": float("nan")}, {"exp": float("inf")},
                                    {"auth_time": float("nan")}, {"nbf": float("-inf")}],
                         ids=["exp-nan", "exp-infinity", "auth-time-nan", "nbf-minus-infinity"])
def test_non_finite_numbers_in_a_signed_token_are_refused(relay, upstream, token_for, claims):
    response = one(relay, request_bytes("/api/openai/v1/models",
                                        [bearer(token_for("acme", **claims))]))
    assert_refused(response, upstream, 401, AUTH_FAILED)


def test_a_signed_token_with_a_crit_header_is_refused(relay, upstream, firebase):
    token = firebase.sign(firebase.claims(None, "user-1", "acme"), header={"crit": ["exp"]})
    response = one(relay, request_bytes("/api/openai/v1/models", [bearer(token)]))
    assert_refused(response, upstream, 401, AUTH_FAILED)
