"""`authz tenant policy ...`, `tenant put/rotate --policy` and `keys issue --policy`
against a real OpenBao: validated before anything is written, never half-written, the
api_key never printed."""

from __future__ import annotations

import json

import pytest

from tests.support.authz_cli import authz

pytestmark = pytest.mark.integration

KEY = "sk-policy-cli-0123456789abcd"
INFERENCE = {"endpoints": "inference", "models": ["gpt-4o-mini"],
             "limits": {"user_requests_per_minute": 60}}


@pytest.fixture
def tenant(vault):
    vault.put_tenant("cli-policy", KEY, organization="org-p", extra={"note": "kept"})
    yield "cli-policy"
    vault.delete_tenant("cli-policy")


def test_set_show_clear(vault, tenant, tmp_path):
    env = vault.env
    before = vault.read_tenant(tenant)
    result = authz("tenant", "policy", "set", tenant, json.dumps(INFERENCE), env=env)
    assert result.returncode == 0, result.stderr
    record = vault.read_tenant(tenant)
    assert record == {**before, "policy": INFERENCE}  # every other field kept

    shown = authz("tenant", "policy", "show", tenant, "--json", env=env)
    assert shown.returncode == 0
    assert json.loads(shown.stdout) == {"client_id": tenant, "policy": INFERENCE,
                                        "default": False}
    assert KEY not in shown.stdout + shown.stderr + result.stdout + result.stderr
    shown = authz("tenant", "show", tenant, "--json", env=env)
    assert json.loads(shown.stdout)["policy"] == INFERENCE
    assert KEY not in shown.stdout

    policy_file = tmp_path / "policy.json"
    policy_file.write_text('{"endpoints": ["POST /v1/chat/completions"]}')
    result = authz("tenant", "policy", "set", tenant, "--file", str(policy_file), env=env)
    assert result.returncode == 0, result.stderr
    assert vault.read_tenant(tenant)["policy"] == {"endpoints": ["POST /v1/chat/completions"]}

    result = authz("tenant", "policy", "clear", tenant, env=env)
    assert result.returncode == 0, result.stderr
    assert vault.read_tenant(tenant) == before
    shown = authz("tenant", "policy", "show", tenant, "--json", env=env)
    assert json.loads(shown.stdout)["default"] is True


@pytest.mark.parametrize(("policy", "message"), [
    ('{"endpoints": "inference", "modles": ["x"]}', "unknown field 'modles'"),
    ('{"endpoints": ["GET /v1/../files"]}', "rule 'GET /v1/../files'"),
    ('{"limits": {"user_requests_per_minute": -5}}', "limits.user_requests_per_minute: -5"),
    ('{"endpoints": "inference"', "not valid JSON"),
])
def test_a_bad_policy_is_refused_and_nothing_changes(vault, tenant, policy, message):
    before = vault.client().secrets.kv.v2.read_secret_version(
        path=f"openai/clients/{tenant}", mount_point="secret",
        raise_on_deleted_version=True)["data"]["metadata"]["version"]
    result = authz("tenant", "policy", "set", tenant, policy, env=vault.env)
    assert result.returncode == 2
    assert message in result.stderr
    after = vault.client().secrets.kv.v2.read_secret_version(
        path=f"openai/clients/{tenant}", mount_point="secret",
        raise_on_deleted_version=True)["data"]["metadata"]["version"]
    assert after == before
    assert "policy" not in vault.read_tenant(tenant)


def test_put_and_rotate_keep_the_policy(vault, tenant):
    env = vault.env
    assert authz("tenant", "policy", "set", tenant, json.dumps(INFERENCE),
                 env=env).returncode == 0
    result = authz("tenant", "rotate", tenant, "--stdin", env=env,
                   stdin="sk-rotated-0123456789abcdefghij\n")
    assert result.returncode == 0, result.stderr
    assert vault.read_tenant(tenant)["policy"] == INFERENCE
    result = authz("tenant", "put", tenant, "--stdin", env=env,
                   stdin="sk-put-again-0123456789abcdefgh\n")
    assert result.returncode == 0, result.stderr
    record = vault.read_tenant(tenant)
    assert record["api_key"] == "sk-put-again-0123456789abcdefgh"
    assert record["policy"] == INFERENCE
    result = authz("tenant", "put", tenant, "--stdin", "--policy", '{"endpoints": "all"}',
                   env=env, stdin="sk-put-again-0123456789abcdefgh\n")
    assert result.returncode == 0, result.stderr
    assert vault.read_tenant(tenant)["policy"] == {"endpoints": "all"}


def test_a_broken_stored_policy_is_shown_not_fatal(vault, tenant):
    vault.put_tenant(tenant, KEY, policy={"endpoints": "some"})
    shown = authz("tenant", "policy", "show", tenant, "--json", env=vault.env)
    assert shown.returncode == 0, shown.stderr
    assert "endpoints" in json.loads(shown.stdout)["policy"]["invalid"]
    listed = authz("tenant", "list", "--json", env=vault.env)
    assert listed.returncode == 0, listed.stderr
    assert KEY not in listed.stdout


def test_policy_commands_on_a_missing_tenant(vault):
    for args in (("set", "cli-nobody", '{"endpoints": "all"}'), ("show", "cli-nobody"),
                 ("clear", "cli-nobody")):
        result = authz("tenant", "policy", *args, env=vault.env)
        assert result.returncode == 1, (args, result.stderr)
        assert "no tenant" in result.stderr


def test_keys_issue_with_its_own_policy(vault, tenant):
    key_policy = {"endpoints": ["POST /v1/chat/completions"], "models": ["gpt-4o-mini"]}
    result = authz("keys", "issue", tenant, "--policy", json.dumps(key_policy), "--json",
                   env=vault.env)
    assert result.returncode == 0, result.stderr
    issued = json.loads(result.stdout)
    assert issued["policy"] == key_policy
    bad = authz("keys", "issue", tenant, "--policy", '{"endpoints": "none"}', env=vault.env)
    assert bad.returncode == 2
    assert "endpoints" in bad.stderr
