import pytest

pytestmark = pytest.mark.integration


def test_sdk_call_through_the_relay(relay, sdk, upstream, tenants):
    completion = sdk("acme").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content
    [received] = upstream.requests
    assert received.path == "/v1/chat/completions"
    assert received.header("authorization") == f"Bearer {tenants['acme'].api_key}"
