"""Metering in Envoy (Lua filter of envoy/envoy.yaml): the upstream's own usage, read
from every JSON and SSE response as it streams, lands in Envoy's access log line; a
streamed chat completion whose client did not ask for usage is still metered, and the
client's stream stays what it would have been.

Real Envoy, `authz serve`, OpenBao, the TLS stand-in for OpenAI and the official SDK.
Until the policy engine sets `inject_usage` itself, the relay here renders the one
template plus a test-only Lua filter (after ext_authz, before the metering filter) that
sets it by the policy's rule: `POST /v1/chat/completions`, `"stream": true`, no
top-level `stream_options`.
"""

from __future__ import annotations

import itertools
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.integration.conftest import relay_env
from tests.support.fake_openai import FakeOpenAI
from tests.support.firebase import FirebaseKeys
from tests.support.relay import RelayStack
from tests.support.tenants import Tenant
from tests.support.tls import TestPKI
from tests.support.vault import BaoDevServer

pytestmark = pytest.mark.integration

METERING_FILTER = "          - name: envoy.filters.http.lua\n"
# Stands in for the authz service's `inject_usage` (governance part 1), by its rule.
# The whole request body is buffered here: test-only, never in the shipped template.
INJECT_FOR_TESTS = '''          - name: test.inject_usage
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(handle)
                    local h = handle:headers()
                    local path = "/api/openai/v1/chat/completions"
                    if h:get(":method") ~= "POST" or h:get(":path") ~= path then
                      return
                    end
                    local body = handle:body()
                    if body == nil then
                      return
                    end
                    local text = body:getBytes(0, body:length())
                    if string.find(text, '"stream"%s*:%s*true') and
                        not string.find(text, '"stream_options"', 1, true) then
                      handle:streamInfo():dynamicMetadata():set(
                        "envoy.filters.http.ext_authz", "inject_usage", "1")
                    end
                  end
'''


def with_test_injection(config: str) -> str:
    assert config.count(METERING_FILTER) == 1
    return config.replace(METERING_FILTER, INJECT_FOR_TESTS + METERING_FILTER)


@pytest.fixture(scope="module")
def metered(pki: TestPKI, firebase: FirebaseKeys, vault: BaoDevServer,
            fake_openai: FakeOpenAI, tenants: dict[str, Tenant],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayStack]:
    stack = RelayStack(relay_env(pki, firebase, vault, fake_openai),
                       tmp_path_factory.mktemp("metered"),
                       envoy_config_transform=with_test_injection)
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture
def client_for(metered: RelayStack, token_for: Callable[..., str]
               ) -> Iterator[Callable[..., openai.OpenAI]]:
    """The official SDK against the metered relay, over HTTP/1.1 or h2 (h2c)."""
    http_clients: list[httpx.Client] = []

    def make(protocol: str = "h1", client_id: str = "acme", **kwargs: object
             ) -> openai.OpenAI:
        h2 = protocol == "h2"
        http_client = httpx.Client(timeout=30, http1=not h2, http2=h2)
        http_clients.append(http_client)
        return openai.OpenAI(base_url=metered.api_base, api_key=token_for(client_id),
                             http_client=http_client, max_retries=0, **kwargs)  # type: ignore[arg-type]

    yield make
    for http_client in http_clients:
        http_client.close()


def metered_tokens(stack: RelayStack, request_id: str) -> tuple[object, object]:
    entry = stack.access_log_entry(request_id)
    return entry["input_tokens"], entry["output_tokens"]


MESSAGES = [{"role": "user", "content": "Say hello."}]


# ------------------------------------------------------------------ every response shape


def chat_json(client: openai.OpenAI) -> tuple[str, tuple[int, int] | None]:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                           messages=MESSAGES)  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None
    return raw.headers["x-request-id"], (usage.prompt_tokens, usage.completion_tokens)


def chat_stream_asked(client: openai.OpenAI) -> tuple[str, tuple[int, int] | None]:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = list(raw.parse())
    # The client asked: it gets the usage-only chunk, unchanged, and usage null before.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])
    usage = chunks[-1].usage
    return raw.headers["x-request-id"], (usage.prompt_tokens, usage.completion_tokens)


def chat_stream_not_asked(client: openai.OpenAI) -> tuple[str, tuple[int, int] | None]:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    chunks = list(raw.parse())
    # Metered all the same, and the client sees no chunk and no field it did not ask for.
    assert chunks
    assert all(chunk.choices for chunk in chunks)
    assert all("usage" not in chunk.model_dump(exclude_unset=True) for chunk in chunks)
    return raw.headers["x-request-id"], None


def responses_json(client: openai.OpenAI) -> tuple[str, tuple[int, int] | None]:
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi")
    usage = raw.parse().usage
    assert usage is not None
    return raw.headers["x-request-id"], (usage.input_tokens, usage.output_tokens)


def responses_stream(client: openai.OpenAI) -> tuple[str, tuple[int, int] | None]:
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi",
                                                    stream=True)
    events = list(raw.parse())
    assert events[-1].type == "response.completed"
    usage = events[-1].response.usage  # type: ignore[union-attr]
    assert usage is not None
    return raw.headers["x-request-id"], (usage.input_tokens, usage.output_tokens)


def embeddings(client: openai.OpenAI) -> tuple[str, tuple[int, int] | None]:
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                     input=["one", "two", "three"])
    usage = raw.parse().usage
    return raw.headers["x-request-id"], (usage.prompt_tokens, 0)


def images(client: openai.OpenAI) -> tuple[str, tuple[int, int] | None]:
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a dot")
    usage = raw.parse().usage
    assert usage is not None
    return raw.headers["x-request-id"], (usage.input_tokens, usage.output_tokens)


SHAPES = {f.__name__: f for f in (chat_json, chat_stream_asked, chat_stream_not_asked,
                                   responses_json, responses_stream, embeddings, images)}


@pytest.mark.parametrize("protocol", ["h1", "h2"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_metered_tokens_are_the_upstreams_usage(shape, protocol, client_for, metered,
                                                fake_openai):
    # The chunk count sets the output tokens: each shape gets other numbers.
    chunks = 3 + list(SHAPES).index(shape) + (7 if protocol == "h2" else 0)
    client = client_for(protocol, default_headers={"x-test-chunks": str(chunks)})
    request_id, seen_by_client = SHAPES[shape](client)
    reported = fake_openai.reported_usage(request_id)
    assert reported is not None
    if seen_by_client is not None:
        assert seen_by_client == reported
    entry = metered.access_log_entry(request_id)
    assert (entry["input_tokens"], entry["output_tokens"]) == reported
    assert entry["protocol"] == ("HTTP/2" if protocol == "h2" else "HTTP/1.1")
    for key in ("input_tokens", "output_tokens", "client_id", "events"):
        assert "sk-" not in str(entry[key])


@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_found_past_the_window_in_large_bodies(stream, metered, token_for,
                                                        fake_openai):
    # 20,000 words: the JSON body, and Responses' final SSE event (which repeats the
    # whole text), are far larger than the 64 KiB the filter keeps; usage comes last.
    with httpx.Client(timeout=60) as client:
        reply = client.post(metered.api_base + "/responses",
                            json={"model": "gpt-4o-mini", "input": "hi", "stream": stream},
                            headers={"authorization": f"Bearer {token_for('acme')}",
                                     "x-test-chunks": "20000"})
    assert reply.status_code == 200
    assert len(reply.content) > 65536
    request_id = reply.headers["x-request-id"]
    assert metered_tokens(metered, request_id) == fake_openai.reported_usage(request_id)


def test_the_upstream_is_not_asked_to_compress(metered, token_for, fake_openai):
    # Compressed JSON could not be read for usage: the client's accept-encoding stays
    # here, and the upstream answers in plain text.
    with httpx.Client(timeout=30) as client:
        reply = client.post(metered.api_base + "/chat/completions",
                            json={"model": "gpt-4o-mini", "messages": MESSAGES},
                            headers={"authorization": f"Bearer {token_for('acme')}",
                                     "accept-encoding": "gzip, br"})
    assert reply.status_code == 200
    request_id = reply.headers["x-request-id"]
    [received] = [r for r in fake_openai.requests
                  if fake_openai.reported_usage(request_id) is not None][-1:]
    assert received.header("accept-encoding") is None
    assert metered_tokens(metered, request_id) == fake_openai.reported_usage(request_id)


# ------------------------------------------------------------------ injection


def normalised(stream_text: str) -> str:
    """An SSE chat stream with its per-response id and timestamp blanked out."""
    text = re.sub(r'"id":"chatcmpl-[0-9a-f]+"', '"id":"X"', stream_text)
    return re.sub(r'"created":\d+', '"created":0', text)


def test_injected_stream_is_byte_identical_to_one_without_usage(
        metered, fake_openai, pki, token_for):
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    with httpx.Client(timeout=30) as relay_client:
        reply = relay_client.post(
            metered.api_base + "/chat/completions", content=body,
            headers={"authorization": f"Bearer {token_for('acme')}", "x-test-chunks": "6",
                     "content-type": "application/json"})
    assert reply.status_code == 200
    [received] = [r for r in fake_openai.requests if r.path == "/v1/chat/completions"][-1:]
    # The upstream was asked for usage (its body grew by the inserted member) ...
    assert received.body_size == len(body) + len(
        '"stream_options":{"include_usage":true},')
    assert fake_openai.reported_usage(reply.headers["x-request-id"]) is not None
    # ... and the client got what a request without it gets from OpenAI, byte for byte.
    with httpx.Client(timeout=30,
                      verify=ssl.create_default_context(cafile=str(pki.ca_file))) as direct:
        reference = direct.post(fake_openai.url + "/v1/chat/completions", content=body,
                                headers={"x-test-chunks": "6"})
    assert "usage" not in reference.text
    assert normalised(reply.text) == normalised(reference.text)
    assert reply.text.endswith("data: [DONE]\n\n")
    entry = metered.access_log_entry(reply.headers["x-request-id"])
    assert (entry["input_tokens"], entry["output_tokens"]) == fake_openai.reported_usage(
        reply.headers["x-request-id"])
    assert entry["events"] == 8  # 6 content chunks, the finish chunk, the usage chunk


def test_injected_stream_keeps_its_timing(client_for, metered, fake_openai):
    client = client_for(default_headers={"x-test-chunk-interval-ms": "200",
                                         "x-test-chunks": "5"})
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    arrivals = []
    for chunk in raw.parse():
        arrivals.append(time.monotonic())
        assert chunk.choices
    # Each chunk passes as soon as its event is complete: ~200 ms apart, not bunched.
    assert arrivals[0] - started < 1.0
    gaps = [b - a for a, b in itertools.pairwise(arrivals[:5])]
    assert all(gap > 0.12 for gap in gaps), gaps
    request_id = raw.headers["x-request-id"]
    assert metered_tokens(metered, request_id) == fake_openai.reported_usage(request_id)


def test_client_leaving_mid_stream_reports_events_and_no_usage(metered, token_for,
                                                               fake_openai):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", metered.api_base + "/chat/completions", json=body,
        headers={"authorization": f"Bearer {token_for('acme')}",
                 "x-test-chunks": "40", "x-test-chunk-interval-ms": "100"},
    ) as reply:
        request_id = reply.headers["x-request-id"]
        seen = 0
        for line in reply.iter_lines():
            seen += line.startswith("data:")
            if seen == 3:
                break
    # The client is gone: Envoy ends the stream and logs how far it got.
    entry = metered.access_log_entry(request_id)
    assert entry["input_tokens"] is None
    assert entry["output_tokens"] is None
    assert isinstance(entry["events"], int)
    assert 3 <= entry["events"] < 40
    assert "DC" in str(entry["flags"])


def test_upstream_error_passes_byte_for_byte_and_meters_nothing(metered, token_for):
    with httpx.Client(timeout=30) as client:
        reply = client.post(metered.api_base + "/test/status/429",
                            json={"model": "gpt-4o-mini", "stream": True},
                            headers={"authorization": f"Bearer {token_for('acme')}"})
    assert reply.status_code == 429
    assert reply.content == b'{"error":{"message":"upstream says 429","type":"test"}}'
    entry = metered.access_log_entry("req_test")
    assert entry["input_tokens"] is None
    assert entry["events"] is None


def test_invalid_chat_body_error_passes_unchanged(metered, token_for):
    # A streamed chat body the upstream refuses: its 400 JSON reaches the client as is.
    with httpx.Client(timeout=30) as client:
        reply = client.post(metered.api_base + "/chat/completions",
                            content=b'{"stream": true, "messages": [}',
                            headers={"authorization": f"Bearer {token_for('acme')}",
                                     "content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"].startswith("We could not parse")


# ------------------------------------------------------------------ exactness under load

EXACTNESS_REQUESTS = 1000
EXACTNESS_TENANTS = 100
# About 10 s here (2 cores); the bound keeps a slow machine from running on.
EXACTNESS_BUDGET_S = 90.0


def test_metered_tokens_equal_reported_usage_for_every_request(
        metered, fake_openai, vault, token_for, tmp_path: Path):
    """1,000 mixed JSON and streamed requests across 100 tenants, 8 at a time: every
    access log line's tokens equal what the upstream reported for that response."""
    tenants = [f"meter-{i:03d}" for i in range(EXACTNESS_TENANTS)]
    for i, client_id in enumerate(tenants):
        vault.put_tenant(client_id, f"sk-meter-{i:03d}-0123456789abcdef")
    tokens = {client_id: token_for(client_id, f"user-{i}") for i, client_id in
              enumerate(tenants)}
    kinds = [
        ("/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}),
        ("/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}),
        ("/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                               "stream_options": {"include_usage": True}}),
        ("/responses", {"model": "gpt-4o-mini", "input": "hi"}),
        ("/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True}),
        ("/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
    ]
    request_ids: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + EXACTNESS_BUDGET_S
    counter = iter(range(EXACTNESS_REQUESTS))

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            for n in counter:
                if time.monotonic() > deadline:
                    return
                path, body = kinds[n % len(kinds)]
                body = {**body, "user": "u" * (n % 13)}  # different usage per request
                client_id = tenants[n % EXACTNESS_TENANTS]
                reply = client.post(metered.api_base + path, json=body, headers={
                    "authorization": f"Bearer {tokens[client_id]}",
                    "x-test-chunks": str(1 + n % 9)})
                with lock:
                    if reply.status_code != 200:
                        failures.append(f"{path} {reply.status_code} {reply.text[:200]}")
                    else:
                        request_ids.append(reply.headers["x-request-id"])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert len(request_ids) == EXACTNESS_REQUESTS, "ran out of time"
    wanted = set(request_ids)
    log_deadline = time.monotonic() + 15
    while True:
        entries = {e["openai_request_id"]: e for e in metered.access_log()
                   if e.get("openai_request_id") in wanted}
        if len(entries) == len(wanted) or time.monotonic() > log_deadline:
            break
        time.sleep(0.1)  # log poll interval
    wrong = []
    for request_id in request_ids:
        entry = entries.get(request_id)
        reported = fake_openai.reported_usage(request_id)
        got = None if entry is None else (entry["input_tokens"], entry["output_tokens"])
        if reported is None or got != reported:
            wrong.append((request_id, reported, got))
    assert not wrong, f"{len(wrong)} of {len(request_ids)} wrong: {wrong[:5]}"
