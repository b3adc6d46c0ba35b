"""Quick real checks that the test support pieces do what the other tests rely on."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import hvac.exceptions
import jwt
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from tests.support.fake_openai import (
    FakeOpenAI,
    FakeOpenAIProcess,
    StreamingMultipartParser,
    audio_bytes,
)
from tests.support.firebase import CertsServer, FirebaseKeys, b64url_decode, decode_unverified
from tests.support.processes import ManagedProcess, wait_for_http
from tests.support.tls import TestPKI
from tests.support.vault import BaoDevServer

pytestmark = pytest.mark.integration


@pytest.fixture
def http(pki: TestPKI) -> Iterator[httpx2.Client]:
    with httpx2.Client(verify=ssl.create_default_context(cafile=str(pki.ca_file))) as client:
        yield client


@pytest.fixture
def fake_sdk(upstream: FakeOpenAI, http: httpx2.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-test", http_client=http)


MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]

# --------------------------------------------------------------------------- fake upstream


def test_chat_completions_plain_and_streamed_with_paced_chunks(
    fake_sdk: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    done = fake_sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert done.object == "chat.completion"
    assert done.choices[0].message.content == "Hello from the fake upstream"

    arrivals: list[float] = []
    text = ""
    stream = fake_sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-test-chunk-interval-ms": "120", "x-test-chunks": "4"},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text += chunk.choices[0].delta.content
    assert text == "Hello from the fake"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(gaps) == 3
    assert all(0.09 < g < 0.5 for g in gaps), gaps

    reqs = upstream.wait_for_requests(2)
    assert [r.path for r in reqs] == ["/v1/chat/completions"] * 2
    assert reqs[0].header("authorization") == "Bearer sk-test"
    assert reqs[1].header("x-test-chunks") == "4"
    assert upstream.errors == []


def test_responses_plain_and_streamed(fake_sdk: openai.OpenAI) -> None:
    resp = fake_sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert resp.object == "response"
    assert resp.output_text == "Hello from the fake upstream"

    types: list[str] = []
    deltas = ""
    with fake_sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True) as events:
        for event in events:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas += event.delta
            if event.type == "response.completed":
                assert event.response.output_text == deltas
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert deltas == "Hello from the fake upstream"


def test_audio_speech_streams_deterministic_bytes(fake_sdk: openai.OpenAI) -> None:
    speech = fake_sdk.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert speech.response.headers["content-type"] == "audio/mpeg"
    assert speech.content == audio_bytes()
    small = fake_sdk.audio.speech.create(
        model="tts-1", voice="alloy", input="hi", extra_headers={"x-test-audio-bytes": "1000"}
    )
    assert small.content == audio_bytes(1000)
    assert audio_bytes(10, offset=300) == audio_bytes(310)[300:]


def test_files_upload_counts_the_file_part_exactly(
    fake_sdk: openai.OpenAI, upstream: FakeOpenAI
) -> None:
    data = os.urandom(5 * 1024 * 1024)
    uploaded = fake_sdk.files.create(file=("data.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data)
    assert uploaded.filename == "data.jsonl"
    assert uploaded.purpose == "batch"
    (rec,) = upstream.wait_for_requests(1)
    (part,) = [p for p in rec.multipart if p.filename]
    assert part.sha256 == hashlib.sha256(data).hexdigest()
    assert rec.body_size > len(data)


def _multipart(boundary: str, payload: bytes) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_files_upload_chunked_and_parser_boundaries(
    upstream: FakeOpenAI, http: httpx2.Client
) -> None:
    boundary = "b0und4ry"
    # Content that almost contains the delimiter, to catch off-by-one tails.
    payload = (b"\r\n--b0und4r" + os.urandom(1000)) * 300
    body = _multipart(boundary, payload)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 7777):
            yield body[i : i + 7777]

    r = http.post(
        upstream.url + "/v1/files",
        content=pieces(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == len(payload)
    assert r.headers["x-test-file-sha256"] == hashlib.sha256(payload).hexdigest()
    (rec,) = upstream.wait_for_requests(1)
    assert rec.header("transfer-encoding") == "chunked"

    for step in (1, 2, 13, 4096):
        parser = StreamingMultipartParser(boundary)
        for i in range(0, len(body), step):
            parser.feed(body[i : i + step])
        assert parser.finished
        assert [p.size for p in parser.parts] == [5, len(payload)]


def test_status_echo_and_not_found(upstream: FakeOpenAI, http: httpx2.Client) -> None:
    r = http.post(upstream.url + "/v1/test/status/429", json={})
    assert r.status_code == 429
    assert r.json() == {"error": {"message": "upstream says 429", "type": "test"}}
    assert r.headers["set-cookie"] == "upstream=1"
    assert r.headers["x-upstream-marker"] == "yes"
    assert r.headers["x-request-id"] == "req_test"

    r = http.put(upstream.url + "/v1/test/echo?a=1&b=2", content=b"abc", headers={"X-One": "1"})
    echo = r.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("PUT", "/v1/test/echo", "a=1&b=2")
    assert ["x-one", "1"] in echo["headers"]
    assert echo["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert r.headers["x-request-id"].startswith("req_")
    assert "openai-processing-ms" in r.headers

    r = http.get(upstream.url + "/v2/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "x-request-id" in r.headers

    recs = upstream.wait_for_requests(3)
    assert [r.method for r in recs] == ["POST", "PUT", "GET"]
    assert recs[1].query == "a=1&b=2"
    assert recs[1].headers[0][0] == "host"


def _sse_lines(response: httpx2.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[6:]


def test_stream_stall_and_reset_endpoints(upstream: FakeOpenAI, pki: TestPKI) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    with httpx2.Client(verify=ctx, timeout=httpx2.Timeout(5.0, read=0.4)) as client:
        with client.stream("GET", upstream.url + "/v1/test/stream?chunks=3&interval_ms=20") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert [json.loads(d)["i"] for d in _sse_lines(r)] == [0, 1, 2]

        for name, error in (("stall", httpx2.ReadTimeout), ("reset", httpx2.TransportError)):
            got: list[str] = []
            url = f"{upstream.url}/v1/test/{name}?after=2"
            # Two events arrive, then silence (stall) or a TCP RST (reset).
            with pytest.raises(error), client.stream("GET", url) as r:  # noqa: PT012
                for data in _sse_lines(r):
                    got.append(data)
            assert len(got) == 2, name

        with pytest.raises(httpx2.TransportError):
            client.get(upstream.url + "/v1/test/drop")
    assert upstream.errors == []


def test_standalone_process_and_plain_mode(pki: TestPKI, tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    with FakeOpenAIProcess(pki.cert_file, pki.key_file, workers=2, log_path=log) as p:
        assert p.process.alive()
        status = wait_for_http(p.url + "/v1/models", 5, ca_file=pki.ca_file)
        assert status == 200
    assert not p.process.alive()

    with FakeOpenAI() as plain:
        assert plain.url.startswith("http://127.0.0.1:")
        assert httpx2.get(plain.url + "/v1/models/gpt-4o").json()["id"] == "gpt-4o"
        assert httpx2.get(plain.url + "/v1/models/nope").status_code == 404


def test_managed_process_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = ManagedProcess([sys.executable, "-c", code], log_path=tmp_path / "p.log")
    with proc:
        proc.wait_for_log("ready", 5)
        assert proc.alive()
        rc = proc.stop(timeout=0.3)
    assert rc == -signal.SIGKILL
    assert "ready" in proc.log_text()


# --------------------------------------------------------------------------- firebase


def _public_key(pem: str) -> RSAPublicKey:
    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    assert isinstance(key, RSAPublicKey)
    return key


def _verify(token: str, certs: dict[str, str], project: str) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    if kid not in certs:
        raise jwt.InvalidTokenError("unknown kid")
    claims: dict[str, object] = jwt.decode(
        token,
        key=_public_key(certs[kid]),
        algorithms=["RS256"],
        audience=project,
        issuer=f"https://securetoken.google.com/{project}",
    )
    return claims


def test_minted_tokens_verify_for_real_and_forgeries_do_not(
    firebase: FirebaseKeys, firebase_certs: CertsServer
) -> None:
    project = firebase.project_id
    certs = httpx2.get(firebase_certs.url)
    assert certs.headers["cache-control"].startswith("public, max-age=3600")
    served: dict[str, str] = certs.json()
    assert served == firebase.certs_json()
    assert firebase_certs.fetch_count == 1

    token = firebase.mint(project, "user-1", client_id="acme", tenant="t-1")
    claims = _verify(token, served, project)
    assert claims["sub"] == claims["user_id"] == "user-1"
    assert claims["clientId"] == "acme"
    assert claims["exp"] == claims["iat"] + 3600  # type: ignore[operator]
    assert claims["firebase"] == {
        "identities": {},
        "sign_in_provider": "password",
        "tenant": "t-1",
    }
    header, _ = decode_unverified(token)
    assert header == {"alg": "RS256", "kid": firebase.default_kid, "typ": "JWT"}

    no_client = firebase.mint(None, "u2", remove=("firebase.sign_in_provider",), email="a@b")
    _, c2 = decode_unverified(no_client)
    assert "clientId" not in c2
    assert c2["email"] == "a@b"
    assert c2["firebase"] == {"identities": {}}

    forged = {
        "unknown signer": firebase.mint(project, "u", "acme", variant="unknown_signer"),
        "tampered": firebase.mint(project, "u", "acme", variant="tampered"),
        "alg none": firebase.mint(project, "u", "acme", variant="none"),
        "hs256": firebase.mint(project, "u", "acme", variant="hs256_confusion"),
        "unknown kid": firebase.mint(project, "u", "acme", header={"kid": "nope"}),
        "expired": firebase.mint(project, "u", "acme", now=time.time() - 7200),
        "other project": firebase.mint("other", "u", "acme"),
        "wrong iss": firebase.mint(project, "u", "acme", iss="https://evil.example/x"),
    }
    for bad in forged.values():
        with pytest.raises(jwt.InvalidTokenError):
            _verify(bad, served, project)
    assert decode_unverified(forged["tampered"])[1]["clientId"] == "acme-tampered"
    assert forged["alg none"].endswith(".")
    head, body, sig = forged["hs256"].split(".")
    mac = hmac.new(served[firebase.default_kid].encode(), f"{head}.{body}".encode(), "sha256")
    assert b64url_decode(sig) == mac.digest()

    new_kid = firebase.add_key()
    assert set(httpx2.get(firebase_certs.url).json()) == {firebase.default_kid, new_kid}
    _verify(firebase.mint(project, "u", "acme", kid=new_kid), firebase.certs_json(), project)

    firebase_certs.set_down(True)
    assert httpx2.get(firebase_certs.url).status_code == 503
    firebase_certs.set_down(False)
    firebase_certs.set_max_age(5)
    assert httpx2.get(firebase_certs.url).headers["cache-control"].startswith("public, max-age=5,")
    assert firebase_certs.fetch_count == 4
    firebase_certs.stop()
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(firebase_certs.url)


# --------------------------------------------------------------------------- vault


def test_bao_dev_server_put_read_delete(vault: BaoDevServer) -> None:
    # A tenant of its own: the session's tenants (acme...) are shared by later tests.
    vault.put_tenant("selfcheck", "sk-selfcheck-1", organization="org-selfcheck",
                     project="proj-selfcheck")
    client = hvac.Client(url=vault.addr, token=vault.token)
    secret = client.secrets.kv.v2.read_secret_version(
        path="openai/clients/selfcheck", mount_point="secret", raise_on_deleted_version=True
    )
    assert secret["data"]["data"] == {
        "api_key": "sk-selfcheck-1",
        "organization": "org-selfcheck",
        "project": "proj-selfcheck",
    }
    reader = vault.create_token()
    assert vault.read_tenant("selfcheck")["api_key"] == "sk-selfcheck-1"
    assert (
        vault.client(reader).secrets.kv.v2.read_secret_version(
            path="openai/clients/selfcheck", mount_point="secret", raise_on_deleted_version=True
        )["data"]["data"]["api_key"]
        == "sk-selfcheck-1"
    )
    vault.delete_tenant("selfcheck")
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault.read_tenant("selfcheck")
