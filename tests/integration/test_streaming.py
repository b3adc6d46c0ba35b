"""Streaming both ways with no buffering: SSE, binary audio, large uploads."""

import hashlib
import io
import itertools
import time

import httpx2 as httpx
import pytest

from tests.support.fake_openai import audio_bytes

pytestmark = pytest.mark.integration

INTERVAL_S = 0.2


def arrival_gaps(times):
    return [b - a for a, b in itertools.pairwise(times)]


def test_chat_completion_sse_chunks_arrive_spread_out(sdk, upstream):
    client = sdk("acme", default_headers={"x-test-chunk-interval-ms": "200",
                                         "x-test-chunks": "5"})
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    arrivals, text = [], []
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    assert len(arrivals) >= 5
    assert "".join(text)
    # Chunks sent 200 ms apart arrive ~200 ms apart, not all at the end.
    gaps = arrival_gaps(arrivals[:5])
    assert all(gap > INTERVAL_S * 0.6 for gap in gaps), gaps
    assert arrivals[0] - started < 1.0
    [received] = upstream.requests
    assert received.path == "/v1/chat/completions"


def test_responses_sse_streams(sdk):
    client = sdk("globex", default_headers={"x-test-chunk-interval-ms": "200"})
    events, arrivals = [], []
    with client.responses.create(model="gpt-4o-mini", input="hi", stream=True) as stream:
        for event in stream:
            events.append(event.type)
            arrivals.append(time.monotonic())
    assert events[0] == "response.created"
    assert events[-1] == "response.completed"
    assert "response.output_text.delta" in events
    assert arrivals[-1] - arrivals[0] > INTERVAL_S * 2


def test_first_sse_event_is_not_held_back(relay, token_for):
    with httpx.Client(timeout=30) as client, client.stream(
        "GET", relay.api_base + "/test/stream?chunks=3&interval_ms=1500",
        headers={"authorization": f"Bearer {token_for('acme')}"},
    ) as response:
        started = time.monotonic()
        first = next(response.iter_raw())
        elapsed = time.monotonic() - started
    assert b'"i": 0' in first or b'"i":0' in first
    assert elapsed < 1.0, elapsed


def test_binary_audio_streams_byte_for_byte(sdk):
    size = 3 * 1024 * 1024 + 17
    client = sdk("acme", default_headers={"x-test-audio-bytes": str(size)})
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="hello"
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        body = b"".join(response.iter_bytes())
    assert len(body) == size
    assert body == audio_bytes(size)


def test_large_multipart_upload_streams_through(sdk, upstream):
    size = 26 * 1024 * 1024
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    uploaded = sdk("acme").files.create(file=("big.jsonl", io.BytesIO(data)),
                                        purpose="batch")
    assert uploaded.bytes == size
    [received] = upstream.requests
    assert received.complete
    file_part = next(p for p in received.multipart if p.filename == "big.jsonl")
    assert file_part.sha256 == hashlib.sha256(data).hexdigest()


def test_a_stream_longer_than_any_route_timeout_is_not_cut(relay, token_for):
    # 20 s of events, 1 s apart: longer than Envoy's 15 s default route timeout.
    with httpx.Client(timeout=60) as client, client.stream(
        "GET", relay.api_base + "/test/stream?chunks=21&interval_ms=1000",
        headers={"authorization": f"Bearer {token_for('acme')}"},
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) == 21


def test_an_idle_stream_is_closed_after_the_idle_timeout(make_relay, token_for):
    relay = make_relay(stream_idle_timeout_s=1.5)
    started = time.monotonic()
    with httpx.Client(timeout=30) as client, client.stream(
        "GET", relay.api_base + "/test/stall?after=2",
        headers={"authorization": f"Bearer {token_for('acme')}"},
    ) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):
            for _ in response.iter_raw():
                pass
    assert time.monotonic() - started < 10
