"""A ten-minute stream that keeps sending is not cut (issue 5), through the real relay."""

import time

import httpx2 as httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.soak]

MINUTES = 10


@pytest.mark.timeout(MINUTES * 60 + 120)
def test_a_ten_minute_stream_runs_to_its_end(make_relay, token_for):
    # A short idle timeout too: it must only ever close streams that go quiet.
    relay = make_relay(stream_idle_timeout_s=5)
    chunks = MINUTES * 60 // 2
    started = time.monotonic()
    events = 0
    with httpx.Client(timeout=httpx.Timeout(30, read=30)) as client, client.stream(
        "GET", relay.api_base + f"/test/stream?chunks={chunks}&interval_ms=2000",
        headers={"authorization": f"Bearer {token_for('acme')}"},
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                events += 1
    elapsed = time.monotonic() - started
    assert events == chunks
    assert elapsed >= (chunks - 1) * 2 * 0.95, elapsed
