"""The real Firebase Auth Emulator: sign a user up, give them a tenant with `authz users
assign`, sign in, and call through the relay with the (unsigned) emulator token — only in
the explicit development mode. Without the development flag the relay refuses to start.

firebase-tools is installed into .work/node/ by the set-up when missing; if it cannot be,
these tests fail (they are never skipped)."""

from collections.abc import Iterator

import httpx2 as httpx
import pytest

from tests.support.authz_cli import authz, authz_json, seconds_until
from tests.support.firebase_emulator import AuthEmulator, FirebaseToolsUnavailable
from tests.support.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def emulator(firebase, tmp_path_factory) -> Iterator[AuthEmulator]:
    server = AuthEmulator(firebase.project_id, tmp_path_factory.mktemp("auth-emulator"))
    try:
        server.start()
    except FirebaseToolsUnavailable as exc:
        pytest.fail(f"the Firebase Auth Emulator is required and could not be installed: {exc}",
                    pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def dev_env(emulator: AuthEmulator, **extra: str) -> dict[str, str]:
    return {"FIREBASE_AUTH_EMULATOR_HOST": emulator.host,
            "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS": "true", **extra}


def cli_env(emulator: AuthEmulator, project: str) -> dict[str, str]:
    return {"FIREBASE_AUTH_EMULATOR_HOST": emulator.host, "AUTHZ_FIREBASE_PROJECT_ID": project}


def call(relay, token: str) -> httpx.Response:
    with httpx.Client(timeout=20) as client:
        return client.get(relay.api_base + "/models", headers={"authorization": f"Bearer {token}"})


def test_sign_up_assign_sign_in_and_call_through_the_relay(emulator, make_relay, tenants,
                                                           upstream, firebase):
    user = emulator.sign_up("ada@example.com", "correct-horse-1")
    before = user["idToken"]  # no clientId claim yet
    assigned = authz_json("users", "assign", user["localId"], "acme",
                          env=cli_env(emulator, firebase.project_id))
    assert assigned["client_id"] == "acme"
    token = emulator.sign_in("ada@example.com", "correct-horse-1")

    relay = make_relay(dev_env(emulator))
    response = call(relay, token)
    assert response.status_code == 200, response.text
    assert upstream.requests[-1].header("authorization") == f"Bearer {tenants['acme'].api_key}"

    no_claim = call(relay, before)
    assert (no_claim.status_code, no_claim.json()) == (500, {"error": "Client ID not found"})
    # Unsigned tokens are accepted only for this project: another project's is refused...
    forged = firebase.mint("demo-other", "x", "acme", variant="none")
    assert call(relay, forged).status_code == 401
    # ...and so is an "unsigned" token that carries a signature.
    assert call(relay, token + "c2ln").status_code == 401
    assert "DEVELOPMENT MODE" in relay.logs()["authz"]


def test_check_revoked_refuses_a_disabled_user_within_the_cache_ttl(emulator, make_relay,
                                                                    tenants, firebase):
    user = emulator.sign_up("grace@example.com", "correct-horse-2")
    assert authz("users", "assign", user["localId"], "globex",
                 env=cli_env(emulator, firebase.project_id)).returncode == 0
    token = emulator.sign_in("grace@example.com", "correct-horse-2")
    relay = make_relay(dev_env(emulator, AUTHZ_FIREBASE_CHECK_REVOKED="true",
                               AUTHZ_FIREBASE_USER_CACHE_TTL="2s"))
    assert call(relay, token).status_code == 200
    emulator.set_disabled(user["localId"], True)
    elapsed = seconds_until(lambda: call(relay, token).status_code == 401, timeout=15)
    print(f"\ndisabled Firebase user refused after {elapsed:.2f}s (user cache TTL 2s)")
    assert elapsed <= 3.5
    emulator.set_disabled(user["localId"], False)
    assert seconds_until(lambda: call(relay, token).status_code == 200, timeout=15) <= 3.5


def test_without_the_development_flag_the_relay_refuses_to_start(emulator, firebase):
    result = authz("serve", env={"AUTHZ_FIREBASE_PROJECT_ID": firebase.project_id,
                                 "FIREBASE_AUTH_EMULATOR_HOST": emulator.host,
                                 "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS": "",
                                 "AUTHZ_GRPC_ADDR": f"127.0.0.1:{free_port()}"})
    assert result.returncode == 2
    assert "unsigned" in result.stderr
    assert "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true" in result.stderr


def test_users_cli_errors_and_show(emulator, firebase):
    env = cli_env(emulator, firebase.project_id)
    user = emulator.sign_up("linus@example.com", "correct-horse-3")
    assert authz("users", "assign", user["localId"], "initech", env=env).returncode == 0
    shown = authz_json("users", "show", user["localId"], env=env)
    assert (shown["client_id"], shown["email"]) == ("initech", "linus@example.com")
    assert authz("users", "assign", "no-such-uid", "acme", env=env).returncode == 1
    assert authz("users", "assign", user["localId"], "../acme", env=env).returncode == 2
    assert authz("users", "show", user["localId"], env={
        **env, "AUTHZ_FIREBASE_PROJECT_ID": "", "GOOGLE_CLOUD_PROJECT": ""}).returncode == 2
    down = authz("users", "show", user["localId"], env={
        **env, "FIREBASE_AUTH_EMULATOR_HOST": f"127.0.0.1:{free_port()}"})
    assert down.returncode == 4, down.stderr
