"""Which tenant records changed lately: one small KV v2 record beside the tenants.

Vault has no change feed, and reading every tenant record to find the one that changed
costs about 1 ms per tenant (10 s for 10,000). So every write through VaultTenantStore
(`authz tenant put|rotate|rm|policy`, the operator commands) also appends the tenant's
id to a log at `<tenants' folder>/_changes` (a name no clientId can take, so it is never
served or listed as a tenant):

    {"seq": 42, "recent": [[41, "acme"], [42, "globex"]]}     # the last RECENT changes

written with check-and-set, so two writers never lose each other's entry. A reader (the
fast path's control plane) polls this one record and re-reads only the tenants named
since the sequence number it last saw; when entries it has not seen fell off the log,
or the log is gone, it reads everything again. Writes that bypass the store (a raw
`bao kv put`) are not logged: the reader's periodic full read finds them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from authz.errors import RelayError
from authz.tenants.client_id import tenant_folder

if TYPE_CHECKING:  # vault.py imports this module
    from authz.tenants.vault import KvStore

log = logging.getLogger(__name__)

LOG_NAME = "_changes"
RECENT = 256


def log_path(path_template: str) -> str | None:
    """Where the log of a tenant path template lives; None when the template does not
    end in /{client_id} (its tenants cannot be listed, so nothing reads a log)."""
    parent = tenant_folder(path_template)
    if parent is None:
        return None
    return f"{parent}/{LOG_NAME}" if parent else LOG_NAME


@dataclass(frozen=True)
class Changes:
    seq: int
    #: (seq, client_id), oldest first.
    recent: tuple[tuple[int, str], ...]

    def since(self, seen: int) -> frozenset[str] | None:
        """The tenants changed after `seen`; None when the log cannot tell (entries
        fell off, or it was reset), so everything must be read again."""
        if self.seq == seen:
            return frozenset()
        if self.seq < seen or not self.recent or self.recent[0][0] > seen + 1:
            return None
        return frozenset(client_id for seq, client_id in self.recent if seq > seen)


def _parse(data: dict[str, Any] | None) -> Changes:
    if not data:
        return Changes(0, ())
    seq = data.get("seq")
    recent = data.get("recent")
    if not isinstance(seq, int) or not isinstance(recent, list):
        return Changes(-1, ())  # unreadable: a reader reads everything
    entries = tuple((entry[0], entry[1]) for entry in recent
                    if isinstance(entry, list) and len(entry) == 2
                    and isinstance(entry[0], int) and isinstance(entry[1], str))
    return Changes(seq, entries)


def read_changes(kv: KvStore, path: str) -> Changes:
    """The log (VaultUnavailable when Vault cannot be read)."""
    return _parse(kv.read(path))


def note_change(kv: KvStore, path: str, client_id: str, *, attempts: int = 5) -> bool:
    """Append one change (check-and-set, retried on a concurrent writer). Best effort:
    the tenant write it follows is done either way; False (with a warning) when the log
    could not be written, which readers make up for with their periodic full read."""
    try:
        for _ in range(attempts):
            data, version = kv.read_with_version(path)
            current = _parse(data)
            seq = max(current.seq, 0) + 1
            recent = [*([s, c] for s, c in current.recent), [seq, client_id]][-RECENT:]
            if kv.write(path, {"seq": seq, "recent": recent}, cas=version) is not None:
                return True
    except RelayError as exc:
        log.warning("tenant change not logged; the relay's fast path finds it with its "
                    "next full read", extra={"cause": exc.log_detail})
        return False
    log.warning("tenant change not logged (the log kept changing)")
    return False
