"""Property (hypothesis) over random tenants, tokens, headers, paths and protocols, against
the real stack: whatever reaches the upstream carries exactly its caller's own tenant key,
no other tenant's key appears anywhere the upstream (or the caller) can see, nothing is
forwarded without a valid token, and every refusal is JSON.

Requests go out as raw HTTP/1.1 bytes or raw HTTP/2 frames, so paths reach Envoy exactly as
generated (no client-side normalisation).
"""

from __future__ import annotations

import json
import secrets
import socket
import string
import time
import uuid
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import TENANTS

pytestmark = pytest.mark.integration

POOL_SIZE = 8
OTHER = "<other tenant>"
VALID_KINDS = ("valid", "valid-tenant-claim")
KINDS = (*VALID_KINDS, "tampered-to-other", "payload-of-other", "unknown-signer", "alg-none",
         "hs256-confusion", "expired", "wrong-aud", "unknown-kid", "no-key-tenant",
         "hostile-client-id", "garbage", "no-token")
REFUSALS = {400, 401, 403, 404, 431, 500}


@dataclass(frozen=True)
class PoolTenant:
    client_id: str
    api_key: str
    organization: str | None


@pytest.fixture(scope="module")
def pool(vault) -> list[PoolTenant]:
    tenants = []
    for i in range(POOL_SIZE):
        tenant = PoolTenant(f"prop-{secrets.token_hex(3)}-{i}",
                            f"sk-prop-{i}-{secrets.token_hex(16)}",
                            f"org-prop-{i}" if i % 3 == 0 else None)
        vault.put_tenant(tenant.client_id, tenant.api_key, organization=tenant.organization)
        tenants.append(tenant)
    return tenants


# --------------------------------------------------------------------------- strategies

SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "%2e%2e", "%2E.", ".%2e", "%2f", "%2F", "%5c", "%5C", "\\",
                     "..\\..", "", "v1", "v1", "models", "test", "echo", "chat", "files",
                     "%00", "%252e%252e", ";", "..;", "%c0%ae", "~", "%41"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@",
            min_size=1, max_size=8),
)
PATH = st.one_of(
    st.just("v1/test/echo"),
    st.lists(SEGMENT, max_size=6).map("/".join),
)
QUERY = st.one_of(st.just(""), st.text(alphabet=string.ascii_letters + string.digits + "=&%./",
                                       max_size=16).map(lambda q: "?" + q))
HOSTILE_HEADERS = st.lists(
    st.sampled_from([("x-client-id", OTHER), ("x-tenant-id", OTHER),
                     ("x-relay-client-id", OTHER), ("x_client_id", OTHER),
                     ("openai-organization", "org-evil"), ("openai-project", "proj-evil"),
                     ("x-forwarded-for", "203.0.113.7"), ("cookie", f"tenant={OTHER}"),
                     ("x-api-key", "sk-client-chosen-0000"), ("forwarded", "for=x")]),
    max_size=4, unique=True,
)


@dataclass
class Reply:
    status: int  # -1: the stream was reset (HTTP/2)
    body: bytes


def http1(port: int, method: str, target: str, headers: list[tuple[str, str]]) -> Reply:
    head = f"{method} {target} HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 0\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock, \
            sock.makefile("rb") as f:
        sock.sendall(head.encode("latin-1"))
        status = int(f.readline().split(b" ", 2)[1])
        fields = {}
        while (line := f.readline().rstrip(b"\r\n")) != b"":
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while (size := int(f.readline().split(b";")[0], 16)) != 0:
                body += f.read(size)
                f.readline()
        elif b"content-length" in fields:
            body = f.read(int(fields[b"content-length"]))
        else:
            body = f.read()
    return Reply(status, body)


def http2(port: int, method: str, target: str, headers: list[tuple[str, str]]) -> Reply:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                validate_outbound_headers=False,
                                                                normalize_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", method), (":scheme", "http"), (":authority", "relay.test"),
                          (":path", target), *headers], end_stream=True)
    status, body = None, b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 20
        done = False
        while not done and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    status, done = status or -1, True
            sock.sendall(conn.data_to_send())
    assert status is not None, "no HTTP/2 response and no reset: the relay hung"
    return Reply(status, body)


def make_token(firebase, kind: str, tenant: PoolTenant, other: PoolTenant) -> str | None:
    uid = f"prop-{uuid.uuid4().hex[:8]}"
    mint = firebase.mint
    return {
        "valid": lambda: mint(None, uid, tenant.client_id),
        "valid-tenant-claim": lambda: mint(None, uid, None, tenant=tenant.client_id),
        "tampered-to-other": lambda: mint(None, uid, tenant.client_id, variant="tampered",
                                          tamper={"clientId": other.client_id}),
        "payload-of-other": lambda: ".".join(
            [*mint(None, uid, tenant.client_id).split(".")[:1],
             mint(None, uid, other.client_id).split(".")[1],
             mint(None, uid, tenant.client_id).split(".")[2]]),
        "unknown-signer": lambda: mint(None, uid, tenant.client_id, variant="unknown_signer"),
        "alg-none": lambda: mint(None, uid, tenant.client_id, variant="none"),
        "hs256-confusion": lambda: mint(None, uid, tenant.client_id,
                                        variant="hs256_confusion"),
        "expired": lambda: mint(None, uid, tenant.client_id, now=time.time() - 7200),
        "wrong-aud": lambda: mint(None, uid, tenant.client_id, aud="another-project"),
        "unknown-kid": lambda: mint(None, uid, tenant.client_id, kid="prop-unknown-kid"),
        "no-key-tenant": lambda: mint(None, uid, f"{tenant.client_id}-nokey"),
        "hostile-client-id": lambda: mint(None, uid, f"{tenant.client_id}/../{other.client_id}"),
        "garbage": lambda: secrets.token_urlsafe(40),
        "no-token": lambda: None,
    }[kind]()


@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    who=st.integers(0, POOL_SIZE - 1),
    other_offset=st.integers(1, POOL_SIZE - 1),
    kind=st.one_of(st.sampled_from(VALID_KINDS), st.sampled_from(KINDS)),
    path=PATH,
    query=QUERY,
    hostile=HOSTILE_HEADERS,
    protocol=st.sampled_from(["h1", "h2"]),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
)
def test_every_forwarded_request_carries_exactly_its_own_tenants_key(
    relay, fake_openai, firebase, pool, who, other_offset, kind, path, query, hostile,
    protocol, method
):
    tenant, other = pool[who], pool[(who + other_offset) % POOL_SIZE]
    token = make_token(firebase, kind, tenant, other)
    tag = uuid.uuid4().hex
    headers = [(name, value.replace(OTHER, other.client_id)) for name, value in hostile]
    headers.append(("x-prop-tag", tag))
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    target = f"/api/openai/{path}{query}"
    send = http1 if protocol == "h1" else http2
    reply = send(relay.envoy_port, method, target, headers)
    forwarded = [r for r in fake_openai.requests if r.header("x-prop-tag") == tag]
    event(f"{protocol} {'valid' if kind in VALID_KINDS else 'invalid'} token: "
          f"{'forwarded' if forwarded else 'refused'}")

    other_keys = {t.api_key for t in pool if t is not tenant} | {t.api_key for t in TENANTS}
    assert not any(key.encode() in reply.body for key in other_keys)
    assert len(forwarded) <= 1
    if not forwarded:
        assert reply.status in REFUSALS or reply.status == -1, (reply.status, reply.body)
        if reply.status != -1:
            assert isinstance(json.loads(reply.body)["error"], str)
        if kind in VALID_KINDS and all(c in string.ascii_letters + "/" for c in path) \
                and "//" not in f"/{path}":
            pytest.fail(f"a valid request to a plain path was not forwarded: {reply}")
        return
    [received] = forwarded
    assert kind in VALID_KINDS, f"forwarded without a valid token ({kind})"
    assert received.header_values("authorization") == [f"Bearer {tenant.api_key}"]
    seen = repr(received.headers) + received.target
    assert not any(key in seen for key in other_keys)
    assert other.client_id not in seen
    assert received.header("host") == fake_openai.url.removeprefix("https://")
    assert received.header_values("openai-organization") == (
        [tenant.organization] if tenant.organization else [])
    assert not received.header_values("openai-project")
    names = received.header_names()
    assert not names & {"x-client-id", "x-tenant-id", "x_client_id", "cookie", "x-api-key",
                        "forwarded", "x-forwarded-for"}
    assert not [n for n in names if n.startswith(("x-relay-", "x-envoy-"))]
    segments = received.path.split("/")
    assert received.path.startswith("/")
    assert ".." not in segments
    assert "\\" not in received.path
