"""Where the service's Vault token comes from, and how it is kept valid.

AUTHZ_VAULT_AUTH picks the method:

- ``token``: the static VAULT_TOKEN, used as given; when it has a TTL and is renewable
  it is renewed like a login token (the same RenewingToken, with GivenToken as its
  "login": it looks the token up instead of logging in, and never revokes it).
- ``approle``: log in at ``auth/<mount>/login`` with a role_id and a secret_id. The
  secret_id is read from its file at every login, so it can be rotated in place.
- ``kubernetes``: log in at ``auth/<mount>/login`` with the pod's service-account token
  (a JWT), read from its file at every login: projected tokens are rotated by the
  kubelet, and Vault checks each one with the Kubernetes TokenReview API.

A token obtained by logging in is kept valid by a background thread: it is renewed
(``auth/token/renew-self``) once ``RENEW_AT`` of its lease has passed, and replaced by a
fresh login when it cannot be renewed, when renewal fails, or when Vault grants less
than half of the login's TTL (the role's max TTL is near); a token replaced by a new
login is revoked, so logins never pile up live tokens. A failed attempt is retried
with a capped backoff, never later than the token's expiry. Meanwhile reads keep using
the current token while it is valid; once it has expired and no new one could be had,
``token()`` raises VaultUnavailable, so checks fail closed with a 500.

Tokens, secret_ids and JWTs never reach a log line or an exception message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import hvac
import hvac.exceptions
import requests

from authz.errors import VaultUnavailable

__all__ = [
    "AUTH_METHODS",
    "AppRoleLogin",
    "GivenToken",
    "KubernetesLogin",
    "LoginMethod",
    "RenewingToken",
    "StaticToken",
    "TokenProvider",
    "VaultLogin",
    "token_provider",
]

log = logging.getLogger(__name__)

AUTH_METHODS = ("token", "approle", "kubernetes")
DEFAULT_K8S_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: Renew when this fraction of the lease has passed.
RENEW_AT = 2 / 3
_LOGIN_ERRORS = (
    hvac.exceptions.VaultError,
    requests.RequestException,
    OSError,
    KeyError,
    TypeError,
    ValueError,
)


class TokenProvider(Protocol):
    """A Vault token for the next request."""

    def token(self) -> str:
        """The current token; VaultUnavailable when there is no valid one."""
        ...

    def refresh(self) -> bool:
        """Vault refused the current token: get a new one now. True if one was obtained."""
        ...

    def start(self) -> None:
        """Begin keeping the token valid in the background (idempotent)."""
        ...

    def close(self) -> None:
        """Stop the background work and give the token back (best effort)."""
        ...


class StaticToken:
    """AUTHZ_VAULT_AUTH=token: the token in VAULT_TOKEN, as given."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"

    def token(self) -> str:
        return self._token

    def refresh(self) -> bool:
        return False  # nothing to log in with

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- login methods


class LoginMethod(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def mount(self) -> str: ...

    @property
    def owns_token(self) -> bool:
        """Whether its tokens are ours to revoke (a login's are; VAULT_TOKEN belongs to
        the operator)."""
        ...

    def login(self, client: hvac.Client) -> dict[str, Any]:
        """Log in; returns Vault's ``auth`` block (client_token, lease_duration, renewable)."""
        ...


def _read_secret_file(path: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise OSError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"the {what} file {path} is empty")
    return value


@dataclass(frozen=True)
class GivenToken:
    """AUTHZ_VAULT_AUTH=token under RenewingToken: "logging in" looks VAULT_TOKEN up for
    its TTL, so one lifecycle renews a static token and a login token alike."""

    token: str = field(repr=False)
    mount: str = "token"
    name: str = "token"
    owns_token: bool = False

    def login(self, client: hvac.Client) -> dict[str, Any]:
        client.token = self.token
        try:
            info = client.auth.token.lookup_self()["data"]
        except hvac.exceptions.Forbidden:
            # A token without lookup-self (no default policy): use it as it is.
            return {"client_token": self.token, "lease_duration": 0, "renewable": False}
        return {"client_token": self.token, "lease_duration": int(info.get("ttl") or 0),
                "renewable": bool(info.get("renewable"))}


@dataclass(frozen=True)
class AppRoleLogin:
    """AppRole: role_id (given, or read from a file) plus a secret_id read from a file."""

    role_id: str = field(default="", repr=False)
    role_id_file: str | None = None
    secret_id_file: str | None = None
    mount: str = "approle"
    name: str = "approle"
    owns_token: bool = True

    def login(self, client: hvac.Client) -> dict[str, Any]:
        role_id = self.role_id or _read_secret_file(self.role_id_file or "", "role_id")
        secret_id = (
            _read_secret_file(self.secret_id_file, "secret_id") if self.secret_id_file else None
        )
        reply = client.auth.approle.login(
            role_id=role_id, secret_id=secret_id, mount_point=self.mount, use_token=False
        )
        auth: dict[str, Any] = reply["auth"]
        return auth


@dataclass(frozen=True)
class KubernetesLogin:
    """Kubernetes: a Vault role plus the service-account JWT read from a file."""

    role: str
    token_file: str = DEFAULT_K8S_TOKEN_FILE
    mount: str = "kubernetes"
    name: str = "kubernetes"
    owns_token: bool = True

    def login(self, client: hvac.Client) -> dict[str, Any]:
        jwt = _read_secret_file(self.token_file, "service account token")
        reply = client.auth.kubernetes.login(
            role=self.role, jwt=jwt, mount_point=self.mount, use_token=False
        )
        auth: dict[str, Any] = reply["auth"]
        return auth


# --------------------------------------------------------------------------- the renewer


@dataclass(frozen=True)
class _Lease:
    token: str = field(repr=False)
    obtained_at: float
    ttl_s: float  # 0: the token does not expire
    renewable: bool
    login_ttl_s: float  # the TTL the last login granted (renewals are compared with it)

    @property
    def expires_at(self) -> float:
        return float("inf") if self.ttl_s <= 0 else self.obtained_at + self.ttl_s

    @property
    def refresh_at(self) -> float:
        return float("inf") if self.ttl_s <= 0 else self.obtained_at + self.ttl_s * RENEW_AT


class RenewingToken:
    """A token from a login method, renewed or replaced before it expires."""

    def __init__(
        self,
        addr: str,
        method: LoginMethod,
        *,
        timeout_s: float = 5.0,
        min_retry_s: float = 1.0,
        max_retry_s: float = 30.0,
        min_relogin_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        client_factory: Callable[[], hvac.Client] | None = None,
    ) -> None:
        self.method = method
        self._clock = clock
        self._min_retry_s = min_retry_s
        self._max_retry_s = max_retry_s
        self._min_relogin_interval_s = min_relogin_interval_s
        self._make_client = client_factory or (
            lambda: hvac.Client(url=addr, timeout=timeout_s)
        )
        self._lease: _Lease | None = None
        self._lock = threading.Lock()  # guards _lease
        self._io_lock = threading.Lock()  # one login or renewal at a time
        self._client: hvac.Client | None = None
        self._failures = 0
        self._next_attempt = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.logins = 0
        self.renewals = 0
        self.errors = 0

    def __repr__(self) -> str:
        return f"RenewingToken({self.method.name}, mount={self.method.mount!r})"

    # -- TokenProvider ---------------------------------------------------------

    def token(self) -> str:
        lease = self._current()
        if lease is not None:
            return lease.token
        with self._io_lock:
            lease = self._current()
            if lease is None:
                lease = self._login_or_raise()
        return lease.token

    def refresh(self) -> bool:
        with self._io_lock:
            lease = self._lease
            if lease is not None and self._clock() - lease.obtained_at < (
                self._min_relogin_interval_s
            ):
                # Someone just obtained this one; another login would not help.
                return True
            try:
                self._login_or_raise()
            except VaultUnavailable:
                return False
        self._wake.set()
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"vault-{self.method.name}-renewal", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._io_lock, self._lock:
            lease, self._lease = self._lease, None
        if lease is not None:
            self._revoke(lease)

    def _revoke(self, lease: _Lease) -> None:
        """Give a token of ours back (best effort); never the operator's VAULT_TOKEN."""
        if not self.method.owns_token or self._clock() >= lease.expires_at:
            return
        try:
            client = self._auth_client()
            client.token = lease.token
            client.auth.token.revoke_self()
        except _LOGIN_ERRORS as exc:
            log.debug("vault token revoke failed", extra={"error": type(exc).__name__})

    # -- state -------------------------------------------------------------------

    def _current(self) -> _Lease | None:
        with self._lock:
            lease = self._lease
        if lease is None or self._clock() >= lease.expires_at:
            return None
        return lease

    def seconds_until_refresh(self) -> float:
        """How long the background thread waits before its next renewal or login."""
        now = self._clock()
        with self._lock:
            lease = self._lease
        due = self._next_attempt if lease is None or self._failures else lease.refresh_at
        return max(0.0, due - now)

    # -- login and renewal -------------------------------------------------------

    def _auth_client(self) -> hvac.Client:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _login_or_raise(self) -> _Lease:
        """Log in (caller holds _io_lock). Raises VaultUnavailable on failure."""
        try:
            client = self._auth_client()
            client.token = None
            auth = self.method.login(client)
            lease = self._lease_from(auth, login_ttl_s=None)
        except _LOGIN_ERRORS as exc:
            self._failed("login", exc)
            raise VaultUnavailable(
                f"vault {self.method.name} login failed: {type(exc).__name__}"
            ) from None
        previous = self._lease
        self._set(lease)
        self.logins += 1
        if previous is not None and previous.token != lease.token:
            # Readers still holding it get a 403, see the token has changed, and retry.
            self._revoke(previous)
        log.info("vault login", extra={"method": self.method.name, "ttl_s": lease.ttl_s,
                                       "renewable": lease.renewable})
        return lease

    def _renew_or_login(self) -> None:
        """One background step: renew the token if worthwhile, else log in again."""
        with self._io_lock:
            lease = self._current()
            if lease is not None and lease.renewable:
                try:
                    client = self._auth_client()
                    client.token = lease.token
                    auth = client.auth.token.renew_self()["auth"]
                    renewed = self._lease_from(auth, login_ttl_s=lease.login_ttl_s)
                except _LOGIN_ERRORS as exc:
                    log.info("vault token renewal failed: logging in again",
                             extra={"method": self.method.name, "error": type(exc).__name__})
                else:
                    if renewed.ttl_s >= renewed.login_ttl_s / 2:
                        self._set(renewed)
                        self.renewals += 1
                        log.debug("vault token renewed", extra={"method": self.method.name,
                                                                "ttl_s": renewed.ttl_s})
                        return
                    # Vault granted less than asked: the max TTL is near. Use the rest of
                    # this token while a new login is made, which starts a new max TTL.
                    self._set(renewed)
            self._login_or_raise()

    def _lease_from(self, auth: dict[str, Any], *, login_ttl_s: float | None) -> _Lease:
        token = auth["client_token"]
        if not isinstance(token, str) or not token:
            raise ValueError("vault returned no client_token")
        ttl = float(auth.get("lease_duration") or 0)
        return _Lease(token=token, obtained_at=self._clock(), ttl_s=ttl,
                      renewable=bool(auth.get("renewable")),
                      login_ttl_s=ttl if login_ttl_s is None else login_ttl_s)

    def _set(self, lease: _Lease) -> None:
        with self._lock:
            self._lease = lease
        self._failures = 0

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self._failures += 1
        backoff = min(self._max_retry_s, self._min_retry_s * 2 ** (self._failures - 1))
        now = self._clock()
        lease = self._lease
        if lease is not None and lease.expires_at > now:
            # Try again before the token we still hold expires.
            backoff = min(backoff, max(self._min_retry_s, (lease.expires_at - now) / 2))
        self._next_attempt = now + backoff
        log.warning(f"vault {what} failed", extra={"method": self.method.name,
                                                  "error": type(exc).__name__,
                                                  "retry_in_s": round(backoff, 3)})

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = self.seconds_until_refresh()
            if delay > 0:
                self._wake.wait(None if delay == float("inf") else delay)
                self._wake.clear()
                continue
            try:
                self._renew_or_login()
            except VaultUnavailable:
                pass  # logged; _failed set the retry time
            except Exception as exc:  # keep the thread alive whatever happens
                self._failed("token renewal", exc)


# --------------------------------------------------------------------------- provider


@dataclass(frozen=True)
class VaultLogin:
    """How to log in to Vault: plain values, built and validated by authz.settings."""

    addr: str
    method: str = "token"  # one of AUTH_METHODS
    token: str = field(default="", repr=False)
    mount: str = ""  # empty: the method's name
    role_id: str = field(default="", repr=False)
    role_id_file: str | None = None
    secret_id_file: str | None = None
    k8s_role: str = ""
    k8s_token_file: str = DEFAULT_K8S_TOKEN_FILE


def token_provider(login: VaultLogin) -> TokenProvider:
    """The provider the login's method asks for (its values are already validated)."""
    method: LoginMethod
    if login.method == "approle":
        method = AppRoleLogin(
            role_id=login.role_id,
            role_id_file=login.role_id_file,
            secret_id_file=login.secret_id_file,
            mount=login.mount or "approle",
        )
    elif login.method == "kubernetes":
        method = KubernetesLogin(
            role=login.k8s_role,
            token_file=login.k8s_token_file,
            mount=login.mount or "kubernetes",
        )
    else:
        method = GivenToken(login.token)
    return RenewingToken(login.addr, method)
