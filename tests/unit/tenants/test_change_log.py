"""The tenants' change log, and the fast path's tenant source reading only what changed.

A KV v2 store in memory (versions and check-and-set as Vault keeps them), counting
reads, so the tests see how many records each poll costs."""

from __future__ import annotations

from typing import Any

import pytest

from authz.errors import VaultUnavailable
from authz.fastpath.tenants import FULL_READ_EVERY_S, TenantSource
from authz.tenants.change_log import RECENT, Changes, log_path, note_change, read_changes

TEMPLATE = "openai/clients/{client_id}"
LOG = "openai/clients/_changes"


class MemoryKv:
    def __init__(self) -> None:
        self.data: dict[str, tuple[dict[str, Any], int]] = {}
        self.reads = 0
        self.down = False

    def read(self, path: str) -> dict[str, Any] | None:
        return self.read_with_version(path)[0]

    def read_with_version(self, path: str) -> tuple[dict[str, Any] | None, int]:
        if self.down:
            raise VaultUnavailable("vault read failed: ConnectionError")
        self.reads += 1
        data, version = self.data.get(path, (None, 0))
        return (None if data is None else dict(data)), version

    def write(self, path: str, data: dict[str, Any], *, cas: int | None = None) -> int | None:
        version = self.data.get(path, ({}, 0))[1]
        if cas is not None and cas != version:
            return None
        self.data[path] = (dict(data), version + 1)
        return version + 1

    def list(self, path: str) -> list[str]:
        prefix = path + "/"
        return sorted({p[len(prefix):] for p in self.data if p.startswith(prefix)})

    def put(self, client_id: str, api_key: str | None, *, logged: bool = True) -> None:
        path = TEMPLATE.format(client_id=client_id)
        if api_key is None:
            self.data.pop(path, None)
        else:
            self.write(path, {"api_key": api_key})
        if logged:
            assert note_change(self, LOG, client_id)  # type: ignore[arg-type]


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def keys(tenants) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {t.client_id: t.api_key for t in tenants}


def test_the_log_lives_beside_the_tenants_under_a_name_no_client_id_can_take():
    assert log_path(TEMPLATE) == LOG
    assert log_path("tenants/{client_id}/key") is None


def test_the_log_keeps_the_last_changes_and_tells_when_it_cannot_say():
    kv = MemoryKv()
    for i in range(RECENT + 10):
        note_change(kv, LOG, f"t{i}")  # type: ignore[arg-type]
    changes = read_changes(kv, LOG)  # type: ignore[arg-type]
    assert changes.seq == RECENT + 10
    assert len(changes.recent) == RECENT
    assert changes.since(changes.seq) == frozenset()
    assert changes.since(changes.seq - 2) == {f"t{RECENT + 8}", f"t{RECENT + 9}"}
    assert changes.since(5) is None  # entries 6..10 fell off
    assert Changes(3, ((3, "a"),)).since(7) is None  # the log was reset


def test_a_concurrent_writer_is_not_lost():
    kv = MemoryKv()
    note_change(kv, LOG, "a")  # type: ignore[arg-type]
    real_write = kv.write
    raced = []

    def write_after_a_rival(path, data, *, cas=None):  # type: ignore[no-untyped-def]
        if not raced:
            raced.append(True)
            real_write(path, {"seq": 2, "recent": [[1, "a"], [2, "rival"]]})
        return real_write(path, data, cas=cas)

    kv.write = write_after_a_rival  # type: ignore[method-assign]
    assert note_change(kv, LOG, "b")  # type: ignore[arg-type]
    assert read_changes(kv, LOG).recent == ((1, "a"), (2, "rival"), (3, "b"))  # type: ignore[arg-type]


def source(kv: MemoryKv, clock: Clock) -> TenantSource:
    return TenantSource(kv, TEMPLATE, clock=clock)  # type: ignore[arg-type]


def slow_full_reads(kv: MemoryKv, clock: Clock) -> None:
    """Make every read of a whole tenant list take 1 s of the clock."""
    real_list = kv.list

    def list_slowly(path: str) -> list[str]:
        clock.now += 1.0
        return real_list(path)

    kv.list = list_slowly  # type: ignore[method-assign]


def test_a_large_set_is_read_once_then_only_what_the_log_names():
    kv, clock = MemoryKv(), Clock()
    for i in range(50):
        kv.put(f"t{i:02d}", f"sk-{i}", logged=False)
    slow_full_reads(kv, clock)
    tenants = source(kv, clock)
    assert len(tenants.refresh()) == 50
    assert tenants.full_reads == 1
    kv.put("t07", "sk-rotated")
    kv.put("t08", None)  # removed
    kv.put("new", "sk-new")
    kv.reads = 0
    found = keys(tenants.refresh())
    assert tenants.full_reads == 1
    assert kv.reads == 1 + 3  # the log, and the three tenants it names
    assert (found["t07"], "t08" in found, found["new"]) == ("sk-rotated", False, "sk-new")
    # Nothing changed: one read (the log).
    kv.reads = 0
    tenants.refresh()
    assert kv.reads == 1
    # `cache invalidate acme`: that tenant whatever the log says; without one: all.
    kv.put("quiet", "sk-quiet", logged=False)
    assert "quiet" in keys(tenants.refresh(frozenset({"quiet"})))
    assert tenants.full_reads == 1
    tenants.refresh(everything=True)
    assert tenants.full_reads == 2


def test_writes_that_bypass_the_log_are_found_by_the_periodic_full_read():
    kv, clock = MemoryKv(), Clock()
    kv.put("a", "sk-a", logged=False)
    slow_full_reads(kv, clock)
    tenants = source(kv, clock)
    tenants.refresh()
    kv.put("raw", "sk-raw", logged=False)
    assert "raw" not in keys(tenants.refresh())
    clock.now += FULL_READ_EVERY_S
    assert "raw" in keys(tenants.refresh())


def test_a_quick_full_read_is_repeated_every_poll_and_lost_entries_force_one():
    kv, clock = MemoryKv(), Clock()
    kv.put("a", "sk-a", logged=False)
    tenants = source(kv, clock)
    tenants.refresh()
    kv.put("raw", "sk-raw", logged=False)
    assert "raw" in keys(tenants.refresh())  # small: read whole every poll
    slow_full_reads(kv, clock)
    tenants.refresh()
    reads = tenants.full_reads
    for i in range(RECENT + 1):
        note_change(kv, LOG, f"x{i}")  # type: ignore[arg-type]
    tenants.refresh()
    assert tenants.full_reads == reads + 1


def test_vault_down_keeps_nothing_half_read():
    kv, clock = MemoryKv(), Clock()
    kv.put("a", "sk-a")
    tenants = source(kv, clock)
    tenants.refresh()
    kv.down = True
    with pytest.raises(VaultUnavailable):
        tenants.refresh()
    kv.down = False
    assert keys(tenants.refresh()) == {"a": "sk-a"}
