import pytest

from authz.errors import ConfigError
from authz.settings import (
    GOOGLE_SECURETOKEN_CERTS_URL,
    Settings,
    format_addr,
    parse_addr,
    parse_duration,
)

BASE = {"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay"}


def test_defaults_match_the_contract():
    settings = Settings.from_env(BASE)
    assert settings.upstream_url == "https://api.openai.com"
    assert settings.upstream_ca_file is None
    assert settings.firebase_certs_url == GOOGLE_SECURETOKEN_CERTS_URL
    assert settings.vault_mount == "secret"
    assert settings.vault_path == "openai/clients/{client_id}"
    assert settings.client_id_claims == ("clientId", "firebase.tenant")
    assert settings.check_timeout_s == 2.0
    assert settings.stream_idle_timeout_s == 300.0
    assert settings.metrics_addr == ("127.0.0.1", 9464)


def test_environment_is_read_once_into_typed_values():
    settings = Settings.from_env({
        **BASE,
        "AUTHZ_CHECK_TIMEOUT": "250ms",
        "AUTHZ_STREAM_IDLE_TIMEOUT": "5m",
        "AUTHZ_CLIENT_ID_CLAIMS": " tenant , org.id ",
        "AUTHZ_METRICS_ADDR": "off",
        "VAULT_TOKEN": "root-token",
    })
    assert settings.check_timeout_s == 0.25
    assert settings.stream_idle_timeout_s == 300.0
    assert settings.client_id_claims == ("tenant", "org.id")
    assert settings.metrics_addr is None
    assert "root-token" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "AUTHZ_FIREBASE_PROJECT_ID"),
        ({**BASE, "AUTHZ_FIREBASE_PROJECT_ID": "Not A Project"}, "AUTHZ_FIREBASE_PROJECT_ID"),
        ({**BASE, "AUTHZ_CHECK_TIMEOUT": "soon"}, "AUTHZ_CHECK_TIMEOUT"),
        ({**BASE, "AUTHZ_CHECK_TIMEOUT": "5m"}, "AUTHZ_CHECK_TIMEOUT"),
        ({**BASE, "AUTHZ_VAULT_PATH": "openai/clients"}, "AUTHZ_VAULT_PATH"),
        ({**BASE, "AUTHZ_VAULT_PATH": "../{client_id}"}, "AUTHZ_VAULT_PATH"),
        ({**BASE, "AUTHZ_VAULT_MOUNT": "/secret/../x"}, "AUTHZ_VAULT_MOUNT"),
        ({**BASE, "AUTHZ_CLIENT_ID_CLAIMS": "a b"}, "AUTHZ_CLIENT_ID_CLAIMS"),
        ({**BASE, "AUTHZ_UPSTREAM_URL": "ftp://x"}, "AUTHZ_UPSTREAM_URL"),
        ({**BASE, "AUTHZ_UPSTREAM_CA_FILE": "/nonexistent/ca.pem"}, "AUTHZ_UPSTREAM_CA_FILE"),
        ({**BASE, "AUTHZ_METRICS_ADDR": "9464"}, "AUTHZ_METRICS_ADDR"),
        ({**BASE, "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}, "FIREBASE_AUTH_EMULATOR_HOST"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("raw", "seconds"), [("2s", 2.0), ("250ms", 0.25), ("5m", 300.0), ("1h", 3600.0), ("7", 7.0)]
)
def test_durations(raw, seconds):
    assert parse_duration("X", raw) == seconds


def test_addresses():
    assert parse_addr("X", "127.0.0.1:9001") == ("127.0.0.1", 9001)
    assert parse_addr("X", "[::1]:9001") == ("::1", 9001)
    with pytest.raises(ConfigError):
        parse_addr("X", "127.0.0.1:99999")


@pytest.mark.parametrize("name", ["VAULT_ADDR", "AUTHZ_FIREBASE_CERTS_URL"])
def test_key_and_secret_urls_need_https_off_loopback(name):
    with pytest.raises(ConfigError, match=f"{name}: 'http://vault.example.test:8200' uses plain"):
        Settings.from_env({**BASE, name: "http://vault.example.test:8200"})
    for url in ("https://vault.example.test:8200", "http://127.0.0.1:8200",
                "http://localhost:8200", "http://[::1]:8200"):
        Settings.from_env({**BASE, name: url})


def test_ipv6_addresses_are_bracketed_both_ways():
    assert parse_addr("X", "[::1]:9001") == ("::1", 9001)
    assert format_addr(("::1", 9001)) == "[::1]:9001"
    assert format_addr(("127.0.0.1", 9001)) == "127.0.0.1:9001"
    assert Settings.from_env({**BASE, "AUTHZ_GRPC_ADDR": "[::1]:9001"}).grpc_addr == ("::1", 9001)
    with pytest.raises(ConfigError, match=r"\[::1\]:PORT"):
        parse_addr("AUTHZ_GRPC_ADDR", "::1:9001")  # ambiguous without brackets


def test_operator_commands_need_no_way_in_but_serving_does():
    with pytest.raises(ConfigError, match="--demo"):
        Settings.from_env({})
    operator = Settings.from_env({"VAULT_ADDR": "http://127.0.0.1:8200"}, serving=False)
    assert operator.vault_addr_given
    assert operator.warnings() == [
        "VAULT_ADDR is set (http://127.0.0.1:8200) but VAULT_TOKEN is not: Vault will refuse "
        "every read (set VAULT_TOKEN, or AUTHZ_VAULT_AUTH)"]
    assert Settings.from_env({**BASE, "VAULT_TOKEN": "t"}).warnings() == []


def test_vault_layer_gets_values_not_settings():
    login = Settings.from_env({**BASE, "VAULT_ADDR": "https://vault.example.test",
                               "VAULT_TOKEN": "s.secret"}).vault_login
    assert login.addr == "https://vault.example.test"
    assert login.method == "token"
    assert "s.secret" not in repr(login)


def test_no_module_but_the_settings_environment_reads_it():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[3] / "authz"
    readers = sorted(
        str(path.relative_to(root)) for path in root.rglob("*.py")
        if any(word in path.read_text() for word in ("os.environ", "getenv("))
    )
    assert readers == ["config/env.py"]


def test_default_policy_is_validated_at_start_naming_the_variable():
    from authz.errors import ConfigError
    from authz.governance.policy import Policy, parse_policy
    from authz.settings import parse_default_policy

    assert parse_default_policy("") == Policy()
    assert parse_default_policy('{"endpoints": "inference"}') == parse_policy(
        {"endpoints": "inference"})
    with pytest.raises(ConfigError) as error:
        parse_default_policy('{"endpoints": "inference", "limit": {}}')
    assert "AUTHZ_DEFAULT_POLICY" in str(error.value)
    assert "'limit'" in str(error.value)


def test_fast_path_is_off_unless_on():
    assert Settings.from_env(BASE).fast_path is False
    assert Settings.from_env({**BASE, "AUTHZ_FAST_PATH": "on"}).fast_path is True
    assert Settings.from_env({**BASE, "AUTHZ_FAST_PATH": " OFF "}).fast_path is False
    for bad in ("yes", "true", "1", "fast"):
        with pytest.raises(ConfigError, match="AUTHZ_FAST_PATH"):
            Settings.from_env({**BASE, "AUTHZ_FAST_PATH": bad})


def test_fast_path_needs_a_listable_vault_path():
    with pytest.raises(ConfigError, match="AUTHZ_FAST_PATH=on needs AUTHZ_VAULT_PATH"):
        Settings.from_env({**BASE, "AUTHZ_FAST_PATH": "on", "AUTHZ_CLIENT_KEYS": "off",
                           "AUTHZ_VAULT_PATH": "openai/{client_id}/key"})


def test_fast_path_serves_its_config_on_loopback_only():
    # The ADS stream holds every tenant's key: never on an address others can reach.
    for addr in ("0.0.0.0:9001", "10.1.2.3:9001", "[::]:9001", "relay.internal:9001"):
        with pytest.raises(ConfigError, match="AUTHZ_FAST_PATH=on needs a loopback "
                                              "AUTHZ_GRPC_ADDR"):
            Settings.from_env({**BASE, "AUTHZ_FAST_PATH": "on", "AUTHZ_GRPC_ADDR": addr})
        # Off, the address is the operator's choice, as before, with a warning: Check's
        # answer carries the tenant's key.
        (warning,) = Settings.from_env({**BASE, "AUTHZ_GRPC_ADDR": addr}).warnings()
        assert warning.startswith(f"AUTHZ_GRPC_ADDR {addr} is not loopback: ")
    for addr in ("127.0.0.1:9001", "127.0.0.2:9001", "[::1]:9001", "localhost:9001"):
        loopback = Settings.from_env({**BASE, "AUTHZ_FAST_PATH": "on", "AUTHZ_GRPC_ADDR": addr})
        assert loopback.fast_path is True
        assert loopback.warnings() == []


def test_fast_path_that_can_serve_nothing_is_warned_about():
    assert Settings.from_env({**BASE, "AUTHZ_FAST_PATH": "on"}).warnings() == []
    revoked = Settings.from_env({**BASE, "AUTHZ_FAST_PATH": "on",
                                 "AUTHZ_FIREBASE_CHECK_REVOKED": "true"})
    assert any("AUTHZ_FAST_PATH" in w for w in revoked.warnings())
