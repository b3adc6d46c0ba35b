"""Shared fixtures: a test PKI, the fake OpenAI upstream, Firebase keys with their
cert endpoint, and a real OpenBao dev server. All on 127.0.0.1, all real sockets.

Session-scoped servers are shared: a test that changes one (pauses Vault, takes the
cert endpoint down, rotates keys) must put it back, or use the function-scoped
helpers (``upstream``, ``firebase_certs``) that reset state around each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.firebase import CertsServer, FirebaseKeys
from tests.support.redis import RedisServer
from tests.support.tls import TestPKI, make_test_pki
from tests.support.vault import BaoDevServer

FIREBASE_PROJECT_ID = "demo-relay"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A test CA and a server certificate for localhost / 127.0.0.1."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def fake_openai(pki: TestPKI) -> Iterator[FakeOpenAI]:
    """The fake OpenAI API over TLS (``https://localhost:PORT``), shared by the session."""
    server = FakeOpenAI(certfile=pki.cert_file, keyfile=pki.key_file).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """The shared fake upstream with its recorded requests cleared for this test."""
    fake_openai.clear()
    return fake_openai


@pytest.fixture(scope="session")
def firebase() -> Iterator[FirebaseKeys]:
    """Keys with one kid (``project_id = "demo-relay"``); ``.server`` is the running
    CertsServer (use ``firebase.server.url`` as AUTHZ_FIREBASE_CERTS_URL)."""
    keys = FirebaseKeys(project_id=FIREBASE_PROJECT_ID)
    server = CertsServer(keys).start()
    keys.server = server
    try:
        yield keys
    finally:
        server.stop()


@pytest.fixture
def firebase_certs(firebase: FirebaseKeys) -> Iterator[CertsServer]:
    """The shared cert endpoint, reset before the test; afterwards the key set is
    restored and the endpoint is up again, serving ``firebase`` with max-age 3600."""
    server = firebase.server
    assert server is not None
    keys = firebase.snapshot()
    server.reset()
    try:
        yield server
    finally:
        firebase.restore(keys)
        server.set_keys(firebase)
        server.set_max_age(3600)
        server.reset()
        if not server.running:
            server.start()


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoDevServer]:
    """A running OpenBao dev server (KV v2 at ``secret/``); ``.addr``, ``.token``."""
    server = BaoDevServer(workdir=tmp_path_factory.mktemp("bao")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh real redis-server on a free loopback port (persistence off); the test may
    kill, pause or restart it (``.start()`` again comes back on the same port)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.resume()
        server.stop()
