"""The shipped Vault policies grant exactly what the default settings read (issue 11,
item 2): tenant keys, and, with client keys on by default, the index and the pepper."""

import re
from pathlib import Path

from authz.settings import Settings
from authz.tenants.policy import relay_read_paths

ROOT = Path(__file__).resolve().parents[3]
_PATH_LINE = re.compile(r'path "([^"]+)" \{ capabilities = \["read"\] \}')


def shipped(text: str, start: str, end: str) -> set[str]:
    block = text[text.index(start):]
    block = block[:block.index(end)]
    assert "capabilities" in block
    return set(_PATH_LINE.findall(block))


def test_default_settings_read_exactly_these_paths():
    settings = Settings.from_env({"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay"})
    assert settings.client_keys_enabled  # auto means on
    assert relay_read_paths(
        mount=settings.vault_mount, tenant_path=settings.vault_path,
        client_keys=settings.client_keys_enabled,
        index_path=settings.client_key_index_path, pepper=settings.client_key_pepper,
    ) == ["secret/data/openai/clients/*", "secret/data/openai/client-keys/*",
          "secret/data/openai/relay/client-key-pepper"]


def test_the_compose_init_script_grants_exactly_that():
    text = (ROOT / "deploy/compose/vault-init.sh").read_text()
    assert shipped(text, "policy write relay-reader", "\nHCL") == set(relay_read_paths())


def test_the_documented_kubernetes_policy_grants_exactly_that():
    text = (ROOT / "docs/deployment.md").read_text()
    assert shipped(text, "policy write openai-relay", "\nHCL") == set(relay_read_paths())


def test_the_containers_suite_uses_the_same_policy():
    text = (ROOT / "tests/containers/conftest.py").read_text()
    assert 'policy=relay_policy_hcl()' in text
