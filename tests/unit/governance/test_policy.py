import json

import pytest

from authz.governance.model import Limits
from authz.governance.policy import (
    INFERENCE_RULES,
    EffectivePolicy,
    Policy,
    PolicyError,
    parse_policy,
    parse_rule,
    policy_to_json,
)

DESIGN_EXAMPLE = {
    "endpoints": "inference",
    "models": ["gpt-4o-mini", "text-embedding-3-*"],
    "limits": {"user_requests_per_minute": 60, "tenant_requests_per_minute": 3000,
               "user_concurrent_requests": 4,
               "user_tokens_per_day": 200000, "tenant_tokens_per_day": 20000000},
}


def test_the_design_example_parses_from_an_object_and_from_a_string():
    policy = parse_policy(DESIGN_EXAMPLE)
    assert policy == parse_policy(json.dumps(DESIGN_EXAMPLE))
    assert policy.endpoints == "inference"
    assert policy.models == ("gpt-4o-mini", "text-embedding-3-*")
    assert policy.limits == Limits(60, 3000, 4, 200000, 20000000)
    assert policy_to_json(policy) == DESIGN_EXAMPLE


def test_defaults_are_the_any_path_contract():
    policy = parse_policy({})
    assert policy == Policy()
    assert policy.allows_all_endpoints
    assert policy.models is None
    assert not policy.limits.any
    assert parse_policy('{"endpoints": "all"}') == policy


def test_inference_profile_is_exactly_the_design_list():
    assert [rule.text for rule in INFERENCE_RULES] == [
        "POST /v1/responses", "POST /v1/chat/completions", "POST /v1/completions",
        "POST /v1/embeddings", "POST /v1/moderations", "POST /v1/images/generations",
        "POST /v1/images/edits", "POST /v1/images/variations", "POST /v1/audio/speech",
        "POST /v1/audio/transcriptions", "POST /v1/audio/translations",
        "GET /v1/models", "GET /v1/models/*",
    ]


@pytest.mark.parametrize(("value", "message"), [
    ({"endpoint": "all"}, "unknown field 'endpoint'"),
    ({"limits": {"user_rpm": 1}}, "limits: unknown field 'user_rpm'"),
    ({"limits": {"user_requests_per_minute": -1}},
     "limits.user_requests_per_minute: -1 is not a non-negative integer"),
    ({"limits": {"user_tokens_per_day": True}}, "limits.user_tokens_per_day: True"),
    ({"limits": {"user_tokens_per_day": 1.5}}, "limits.user_tokens_per_day: 1.5"),
    ({"limits": {"user_tokens_per_day": "10"}}, "limits.user_tokens_per_day: '10'"),
    ({"limits": [1]}, "limits: must be a JSON object"),
    ({"endpoints": "everything"}, "endpoints: 'everything' is not a profile"),
    ({"endpoints": {"GET": "/v1/models"}}, "endpoints: must be"),
    ({"endpoints": ["get /v1/models"]}, "rule 'get /v1/models': METHOD"),
    ({"endpoints": ["FETCH /v1/models"]}, "rule 'FETCH /v1/models': METHOD"),
    ({"endpoints": ["GET  /v1/models"]}, "rule 'GET  /v1/models': the path"),
    ({"endpoints": ["GET /v2/models"]}, "rule 'GET /v2/models': the path must start with /v1/"),
    ({"endpoints": ["GET /v1/models "]}, "rule 'GET /v1/models ': the path"),
    ({"endpoints": ["GET /v1/mo*dels"]}, "rule 'GET /v1/mo*dels'"),
    ({"endpoints": ["GET /v1/%6dodels"]}, "rule 'GET /v1/%6dodels'"),
    ({"endpoints": ["GET /v1/../admin"]}, "rule 'GET /v1/../admin': the path must be normalised"),
    ({"endpoints": ["GET /v1//models"]}, "rule 'GET /v1//models': the path must be normalised"),
    ({"endpoints": ["GET /v1/models\t"]}, "rule"),
    ({"endpoints": [7]}, "rule 7 is not a string"),
    ({"models": "gpt-4o"}, "models: must be a list"),
    ({"models": [""]}, "models: '' is not a non-empty model name"),
    ({"models": [3]}, "models: 3 is not a non-empty model name"),
    ({"models": ["gpt*4o"]}, "models: 'gpt*4o': * is allowed only at the end"),
    ("[1]", "policy must be a JSON object"),
    ("{", "policy is not valid JSON"),
    ('{"limits": {"user_tokens_per_day": NaN}}', "policy is not valid JSON"),
])
def test_invalid_policies_are_refused_naming_the_field(value, message):
    with pytest.raises(PolicyError) as error:
        parse_policy(value)
    assert message in str(error.value)


def test_zero_is_a_valid_limit():
    assert parse_policy({"limits": {"user_requests_per_minute": 0}}).limits.any


def test_rules_match_method_and_path_exactly_or_as_prefix():
    exact, prefix, any_method = (parse_rule("GET /v1/models"), parse_rule("GET /v1/models/*"),
                                 parse_rule("* /v1/files*"))
    assert exact.matches("GET", "/v1/models")
    assert not exact.matches("POST", "/v1/models")
    assert not exact.matches("GET", "/v1/models/")
    assert not exact.matches("GET", "/v1/modelsx")
    assert prefix.matches("GET", "/v1/models/gpt-4o")
    assert not prefix.matches("GET", "/v1/models")
    assert any_method.matches("DELETE", "/v1/files/file-1")
    assert not exact.matches("get", "/v1/models")  # methods are case-sensitive


def test_effective_policy_needs_both_policies_and_takes_the_tighter_limits():
    tenant = parse_policy({"endpoints": "inference", "models": ["gpt-4o*"],
                           "limits": {"user_requests_per_minute": 60,
                                      "tenant_tokens_per_day": 1000}})
    key = parse_policy({"endpoints": ["POST /v1/chat/completions", "GET /v1/files"],
                        "models": ["gpt-4o-mini", "o3"],
                        "limits": {"user_requests_per_minute": 10,
                                   "user_concurrent_requests": 2}})
    both = EffectivePolicy.of(tenant, key)
    assert both.allows_endpoint("POST", "/v1/chat/completions")
    assert not both.allows_endpoint("POST", "/v1/embeddings")  # the key's list lacks it
    assert not both.allows_endpoint("GET", "/v1/files")  # the tenant's profile lacks it
    assert both.allows_model("gpt-4o-mini")
    assert not both.allows_model("o3")
    assert not both.allows_model("gpt-4o")
    assert both.limits == Limits(user_requests_per_minute=10, user_concurrent_requests=2,
                                 tenant_tokens_per_day=1000)
    alone = EffectivePolicy.of(tenant)
    assert alone.limits == tenant.limits
    assert alone.allows_model("gpt-4o")
    assert EffectivePolicy.of(Policy()).allows_all_endpoints
    assert not EffectivePolicy.of(Policy(), Policy(endpoints="inference")).allows_all_endpoints
