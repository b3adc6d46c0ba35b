import pytest

from authz.errors import BadRequest, EndpointNotAllowed, ModelNotAllowed
from authz.governance.endpoints import check_endpoint, openai_path
from authz.governance.estimate import DEFAULT_OUTPUT_TOKENS, estimate_tokens
from authz.governance.models import Body, check_model, needs_usage_injection
from authz.governance.policy import EffectivePolicy, Policy, parse_policy

INFERENCE = EffectivePolicy.of(parse_policy({"endpoints": "inference"}))
ALL = EffectivePolicy.of(Policy())


@pytest.mark.parametrize(("raw", "expected"), [
    ("/api/openai", "/v1/responses"),
    ("/api/openai/", "/v1/responses"),
    ("/api/openai?x=1", "/v1/responses"),
    ("/api/openai/v1/chat/completions", "/v1/chat/completions"),
    ("/api/openai/v1/chat/completions?stream=1#frag", "/v1/chat/completions"),
    ("/api/openai/v1/chat/completions/", "/v1/chat/completions/"),
    ("/api/openai/%761/chat/completions", "/v1/chat/completions"),  # %76 is v
    ("/api/openai/v1/chat%2Dcompletions", "/v1/chat-completions"),
    ("/api/openai/v1/../v1/files", None),
    ("/api/openai/v1/%2e%2e/files", None),
    ("/api/openai/v1/%2E/files", None),
    ("/api/openai/v1/./files", None),
    ("/api/openai/v1//files", None),
    ("/api/openai/v1/files%2fx", None),  # an escaped slash stays escaped: odd
    ("/api/openai/v1/files%00", None),
    ("/api/openai/v1\\files", None),
    ("/api/openai/v1/fil\u00e9s", None),
    ("/api/openai/v1/files\x7f", None),
    ("/api/openai/v1/files x", None),
    ("/api/openaiv1/files", None),
    ("/other/v1/files", None),
])
def test_openai_path(raw, expected):
    assert openai_path(raw) == expected


@pytest.mark.parametrize(("method", "raw"), [
    ("GET", "/api/openai/v1/chat/completions"),  # lists stored completions
    ("GET", "/api/openai/v1/files"),
    ("GET", "/api/openai/v1/responses/resp_123"),
    ("DELETE", "/api/openai/v1/responses/resp_123"),
    ("POST", "/api/openai/v1/realtime/client_secrets"),
    ("POST", "/api/openai/v1/chat/completions/"),  # not the same path to a rule
    ("POST", "/api/openai/V1/chat/completions"),  # paths are case-sensitive
    ("POST", "/api/openai/v1/chat/completions/../../files"),
    ("GET", "/api/openai/v1/models/%2e%2e/files"),
    ("GET", "/api/openai/v1/models/..%2ffiles"),
    ("post", "/api/openai/v1/chat/completions"),
])
def test_inference_refuses(method, raw):
    with pytest.raises(EndpointNotAllowed):
        check_endpoint(INFERENCE, method, raw)


@pytest.mark.parametrize(("method", "raw"), [
    ("POST", "/api/openai"),
    ("POST", "/api/openai/"),
    ("POST", "/api/openai/v1/chat/completions?x=1"),
    ("POST", "/api/openai/%761/embeddings"),
    ("GET", "/api/openai/v1/models"),
    ("GET", "/api/openai/v1/models/gpt-4o-mini"),
])
def test_inference_allows(method, raw):
    check_endpoint(INFERENCE, method, raw)


def test_all_allows_even_odd_paths():
    # Envoy normalised the path already; "all" is the any-path contract.
    assert check_endpoint(ALL, "GET", "/api/openai/v1/%2e%2e/files") is None


MODELS = EffectivePolicy.of(parse_policy({"models": ["gpt-4o-mini", "text-embedding-3-*"]}))


@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-4o-mini", "messages": []}',
    b'{"model": "text-embedding-3-small", "input": "x"}',
    b'{"model": "gpt-4o-mini", "metadata": {"model": "a", "model": "b"}}',  # nested: theirs
    b"",
])
def test_listed_models_pass(raw):
    check_model(MODELS, Body(raw))


@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-4o", "messages": []}',
    b'{"messages": []}',
    b'{"model": 4}',
    b'{"model": null}',
    b'["gpt-4o-mini"]',
    b"null",
    b'{"model": "gpt-4o-mini-2"}',
    b'{"model": "GPT-4O-MINI"}',
])
def test_unlisted_or_missing_models_are_403(raw):
    with pytest.raises(ModelNotAllowed):
        check_model(MODELS, Body(raw))


@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-4o-mini", "model": "gpt-4o"}',
    b'{"model": "gpt-4o-mini", "mod\\u0065l": "gpt-4o"}',
    b'{"model": "gpt-4o-mini", "temperature": NaN}',
    b'{"model": "gpt-4o-mini", "temperature": Infinity}',
    b'{"model": "gpt-4o-mini"',
    b'{"model": "gpt-4o-mini", "x": "\xff"}',
    b'\xef\xbb\xbf{"model": "gpt-4o-mini"}',
    '{"model": "gpt-4o-mini"}'.encode("utf-16"),
    b"model=gpt-4o-mini",
])
def test_unreadable_bodies_are_400(raw):
    with pytest.raises(BadRequest):
        check_model(MODELS, Body(raw))


def test_partial_bodies_cannot_prove_their_model():
    with pytest.raises(ModelNotAllowed):
        check_model(MODELS, Body(b'{"model": "gpt-4o-mini", "input": "', partial=True))


def test_multipart_is_governed_by_endpoints_alone():
    check_model(MODELS, Body(None), multipart=True)
    check_model(MODELS, Body(b"--boundary\r\n..."), multipart=True)


def test_no_models_policy_reads_no_body():
    check_model(ALL, Body(b"not json at all"))


@pytest.mark.parametrize(("method", "path", "raw", "expected"), [
    ("POST", "/v1/chat/completions", b'{"model": "m", "stream": true}', True),
    ("POST", "/v1/chat/completions", b'{"model": "m", "str\\u0065am": true}', True),
    ("POST", "/v1/chat/completions",
     b'{"stream": true, "stream_options": {"include_usage": false}}', False),
    ("POST", "/v1/chat/completions", b'{"stream": true, "stream_options": null}', False),
    ("POST", "/v1/chat/completions", b'{"stream": false}', False),
    ("POST", "/v1/chat/completions", b'{"stream": "true"}', False),
    ("POST", "/v1/chat/completions", b'{"model": "m"}', False),
    ("POST", "/v1/chat/completions", b'{"stream": true', False),
    ("POST", "/v1/chat/completions", b"", False),
    ("POST", "/v1/responses", b'{"stream": true}', False),
    ("GET", "/v1/chat/completions", b'{"stream": true}', False),
    ("POST", None, b'{"stream": true}', False),
])
def test_usage_injection(method, path, raw, expected):
    assert needs_usage_injection(method, path, Body(raw)) is expected


def test_partial_bodies_are_never_injected():
    assert not needs_usage_injection("POST", "/v1/chat/completions",
                                     Body(b'{"stream": true', partial=True))


def test_token_estimate():
    assert estimate_tokens("/v1/models", Body(None)) == 0
    body = b'{"model": "m", "max_tokens": 50}'
    assert estimate_tokens("/v1/chat/completions", Body(body)) == (len(body) + 3) // 4 + 50
    body = b'{"model": "m", "max_output_tokens": 7}'
    assert estimate_tokens("/v1/responses", Body(body)) == (len(body) + 3) // 4 + 7
    body = b'{"model": "m", "max_tokens": true}'
    assert estimate_tokens("/v1/chat/completions", Body(body)) == \
        (len(body) + 3) // 4 + DEFAULT_OUTPUT_TOKENS
    body = b'{"model": "m", "input": "hello"}'
    assert estimate_tokens("/v1/embeddings", Body(body)) == (len(body) + 3) // 4
    assert estimate_tokens("/v1/chat/completions", Body(b"x" * 8, partial=True)) == \
        2 + DEFAULT_OUTPUT_TOKENS


def test_a_cap_spelled_with_escapes_is_still_read():
    """The estimate skips parsing a body that cannot name a cap; escapes can."""
    body = b'{"model": "m", "\\u006dax_tokens": 9}'
    assert estimate_tokens("/v1/chat/completions", Body(body)) == (len(body) + 3) // 4 + 9
    body = b'{"model": "m", "messages": []}'
    parsed = Body(body)
    assert estimate_tokens("/v1/chat/completions", parsed) == \
        (len(body) + 3) // 4 + DEFAULT_OUTPUT_TOKENS
