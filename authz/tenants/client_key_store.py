"""Relay-issued client keys in Vault (or OpenBao) KV v2: index, per-tenant records, pepper.

Layout (mount AUTHZ_VAULT_MOUNT):

    <AUTHZ_VAULT_PATH>/keys/<key_id>          per tenant: hash, hint, created_at,
                                              expires_at, revoked_at, name
    <AUTHZ_CLIENT_KEY_INDEX_PATH>/<hash>      index, what the relay reads: client_id,
                                              key_id, expires_at, revoked
    pepper (AUTHZ_CLIENT_KEY_PEPPER)          "vault:<path>" (default
                                              vault:openai/relay/client-key-pepper, field
                                              `pepper`, created by the first `keys issue`)
                                              or "file:<path>" (kept out of Vault)

The relay only reads the index and the pepper (ClientKeyReader: what it calls per
request), so its Vault token needs read on exactly those two paths and no write access.
The operator's commands (issue, list, revoke: VaultClientKeyStore) write, and reach the
pepper through the same reader.
Issuing writes the tenant record first and the index second (a key is never usable before
it is listed); revoking marks the index first (the key stops working within the cache TTL)
and the record second. Plain keys are never written anywhere.

hvac is synchronous: the relay calls these from a worker thread. Every transport or Vault
failure becomes VaultUnavailable, whose message holds no token, key or secret.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.credentials.client_keys import ClientKeyRecord, hint, key_hash, new_client_key
from authz.errors import ConfigError, VaultUnavailable
from authz.governance.policy import Policy, parse_stored_policy, policy_to_json
from authz.tenants.client_id import is_valid_client_id, tenant_folder, validate_client_id
from authz.tenants.vault import KvStore
from authz.tenants.vault_login import TokenProvider

DEFAULT_INDEX_PATH = "openai/client-keys"
DEFAULT_PEPPER = "vault:openai/relay/client-key-pepper"
DEFAULT_TENANT_PATH = "openai/clients/{client_id}"
_PEPPER_BYTES = 32
@dataclass(frozen=True)
class PepperSource:
    kind: str  # "vault" or "file"
    path: str


def parse_pepper_source(name: str, raw: str) -> PepperSource:
    kind, sep, path = raw.partition(":")
    if not sep or kind not in ("vault", "file") or not path.strip():
        raise ConfigError(f"{name}: {raw!r} must be vault:<secret path> or file:<path>")
    return PepperSource(kind, path.strip())


@dataclass(frozen=True)
class IssuedKey:
    key: str  # shown once, never stored
    client_id: str
    key_id: str
    hint: str
    created_at: float
    expires_at: float | None


@dataclass(frozen=True)
class KeyInfo:
    client_id: str
    key_id: str
    hint: str
    name: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


class ClientKeyReader:
    """The relay's read path: the pepper and index entries, nothing else."""

    def __init__(
        self,
        addr: str,
        token: str | TokenProvider,
        *,
        mount: str = "secret",
        index_path: str = DEFAULT_INDEX_PATH,
        pepper: PepperSource | None = None,
        timeout_s: float = 5.0,
        kv: KvStore | None = None,
    ) -> None:
        # A static token, or the service's login (AppRole, Kubernetes) from vault_login.py.
        self.kv = kv or KvStore(addr, token, mount=mount, timeout_s=timeout_s)
        self._index_path = index_path.rstrip("/")
        self.pepper_source = pepper or parse_pepper_source("pepper", DEFAULT_PEPPER)

    def index_entry(self, hash_hex: str) -> str:
        return f"{self._index_path}/{hash_hex}"

    def read_pepper(self) -> bytes | None:
        source = self.pepper_source
        if source.kind == "file":
            try:
                text = Path(source.path).read_text(encoding="ascii").strip()
            except OSError as exc:
                raise VaultUnavailable(f"pepper file unreadable: {exc.strerror}") from None
            return _decode_pepper(text)
        data = self.kv.read(source.path)
        if data is None:
            return None
        return _decode_pepper(data.get("pepper"))

    def read_index(self, hash_hex: str) -> ClientKeyRecord | None:
        data = self.kv.read(self.index_entry(hash_hex))
        if data is None:
            return None
        client_id, key_id = data.get("client_id"), data.get("key_id")
        if not isinstance(client_id, str) or not isinstance(key_id, str):
            return None
        return ClientKeyRecord(client_id=client_id, key_id=key_id,
                               expires_at=_number(data.get("expires_at")),
                               revoked=data.get("revoked") is not False,
                               policy=parse_stored_policy(data.get("policy"), "client key"))


class VaultClientKeyStore:
    """The operator's side: issue, list, revoke (writes), over the relay's reader."""

    def __init__(
        self,
        addr: str,
        token: str | TokenProvider,
        *,
        mount: str = "secret",
        tenant_path: str = DEFAULT_TENANT_PATH,
        index_path: str = DEFAULT_INDEX_PATH,
        pepper: PepperSource | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._kv = KvStore(addr, token, mount=mount, timeout_s=timeout_s)
        self.reader = ClientKeyReader(addr, token, index_path=index_path, pepper=pepper,
                                      kv=self._kv)
        self._read = self._kv.read
        self._write = self._kv.write
        self._list = self._kv.list
        self._tenant_path = tenant_path
        self._pepper_source = self.reader.pepper_source

    def tenant_path(self, client_id: str) -> str:
        return self._tenant_path.format(client_id=validate_client_id(client_id))

    def _record_path(self, client_id: str, key_id: str) -> str:
        return f"{self.tenant_path(client_id)}/keys/{key_id}"

    def _index_entry(self, hash_hex: str) -> str:
        return self.reader.index_entry(hash_hex)

    def read_pepper(self) -> bytes | None:
        return self.reader.read_pepper()

    def ensure_pepper(self) -> bytes:
        """The pepper, created in Vault (check-and-set: once, whoever races) if absent."""
        pepper = self.read_pepper()
        if pepper is not None:
            return pepper
        if self._pepper_source.kind == "file":
            raise VaultUnavailable("pepper file is empty")
        fresh = base64.b64encode(secrets.token_bytes(_PEPPER_BYTES)).decode("ascii")
        # Check-and-set: if someone else created it first, theirs is used below.
        self._write(self._pepper_source.path, {"pepper": fresh}, create_only=True)
        pepper = self.read_pepper()
        if pepper is None:
            raise VaultUnavailable("pepper could not be created")
        return pepper

    # -- what the operator does -------------------------------------------------------------

    def issue(self, client_id: str, *, expires_at: float | None = None,
              name: str | None = None, policy: Policy | None = None) -> IssuedKey:
        pepper = self.ensure_pepper()
        key = new_client_key(pepper)
        hashed = key_hash(pepper, key)
        key_id = "ck_" + secrets.token_hex(6)
        now = time.time()
        record: dict[str, Any] = {"key_id": key_id, "hash": hashed, "hint": hint(key),
                                  "created_at": now, "expires_at": expires_at}
        if name:
            record["name"] = name
        # The key's own policy goes in both: the record for `keys list`, the index for
        # the relay (which reads only the index).
        policy_json = policy_to_json(policy) if policy is not None else None
        if policy_json is not None:
            record["policy"] = policy_json
        if self._write(self._record_path(client_id, key_id), record, create_only=True) is None:
            raise VaultUnavailable("client key id collision: try again")
        index: dict[str, Any] = {"client_id": client_id, "key_id": key_id,
                                 "expires_at": expires_at, "revoked": False}
        if policy_json is not None:
            index["policy"] = policy_json
        if self._write(self._index_entry(hashed), index, create_only=True) is None:
            raise VaultUnavailable("client key hash collision: try again")
        return IssuedKey(key, client_id, key_id, hint(key), now, expires_at)

    def list_keys(self, client_id: str) -> list[KeyInfo]:
        infos = []
        for key_id in self._list(f"{self.tenant_path(client_id)}/keys"):
            if key_id.endswith("/"):
                continue
            data = self._read(self._record_path(client_id, key_id))
            if data is None:
                continue
            name = data.get("name")
            infos.append(KeyInfo(
                client_id=client_id, key_id=key_id, hint=str(data.get("hint", "")),
                name=name if isinstance(name, str) else None,
                created_at=_number(data.get("created_at")) or 0.0,
                expires_at=_number(data.get("expires_at")),
                revoked_at=_number(data.get("revoked_at")),
            ))
        return sorted(infos, key=lambda info: info.created_at)

    def revoke(self, client_id: str, key_id: str) -> KeyInfo | None:
        """Revoke one key; None when the tenant has no such key. Idempotent."""
        if not key_id.startswith("ck_") or not key_id[3:].isalnum():
            return None
        path = self._record_path(client_id, key_id)
        data = self._read(path)
        if data is None:
            return None
        hashed = data.get("hash")
        if isinstance(hashed, str) and len(hashed) == 64 and hashed.isalnum():
            index = self._read(self._index_entry(hashed)) or {}
            self._write(self._index_entry(hashed), {
                **index, "client_id": client_id, "key_id": key_id,
                "expires_at": index.get("expires_at"), "revoked": True})
        revoked_at = _number(data.get("revoked_at")) or time.time()
        self._write(path, {**data, "revoked_at": revoked_at})
        name = data.get("name")
        return KeyInfo(client_id, key_id, str(data.get("hint", "")),
                       name if isinstance(name, str) else None,
                       _number(data.get("created_at")) or 0.0,
                       _number(data.get("expires_at")), revoked_at)

    def revoke_all(self, client_id: str) -> int:
        count = 0
        for info in self.list_keys(client_id):
            if info.revoked_at is None and self.revoke(client_id, info.key_id) is not None:
                count += 1
        return count

    def list_tenants(self) -> list[str]:
        """Every tenant with a secret under the AUTHZ_VAULT_PATH template's parent."""
        parent = tenant_folder(self._tenant_path)
        if parent is None:
            raise VaultUnavailable("AUTHZ_VAULT_PATH must end in /{client_id} to list tenants")
        names = {name.rstrip("/") for name in self._list(parent)}
        return sorted(name for name in names if is_valid_client_id(name)
                      and self._read(self.tenant_path(name)) is not None)


def _decode_pepper(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VaultUnavailable("pepper is not base64") from None
    if len(raw) < 16:
        raise VaultUnavailable("pepper is shorter than 16 bytes")
    return raw
