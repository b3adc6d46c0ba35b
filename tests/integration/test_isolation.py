"""Tenants interleaved under concurrency: each request upstream carries only its own key."""

from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import pytest

pytestmark = pytest.mark.integration


def test_interleaved_tenants_each_get_only_their_own_key(relay, upstream, token_for, tenants):
    names = ["acme", "globex", "initech"]
    tokens = {name: [token_for(name, uid=f"{name}-user-{i}") for i in range(5)]
              for name in names}
    jobs = [(names[i % 3], tokens[names[i % 3]][i % 5], i) for i in range(300)]

    def call(job):
        tenant, token, n = job
        with httpx.Client(timeout=30) as client:
            response = client.post(relay.api_base + "/test/echo", content=b"{}",
                                   headers={"authorization": f"Bearer {token}",
                                            "x-test-tag": f"{tenant}:{n}"})
        return response.status_code

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(call, jobs))
    assert statuses == [200] * len(jobs)
    received = upstream.wait_for_requests(len(jobs), timeout=30)
    assert len(received) == len(jobs)
    all_keys = {t.api_key for t in tenants.values()}
    for request in received:
        tenant = request.header("x-test-tag").split(":")[0]
        assert request.header_values("authorization") == [f"Bearer {tenants[tenant].api_key}"]
        others = all_keys - {tenants[tenant].api_key}
        assert not any(key in repr(request.headers) for key in others)
