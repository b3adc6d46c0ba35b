"""The fast path's cache of verified tokens (resources.py `served`), run in LuaJIT (lupa).

A token seen again is not verified again while it is remembered; the cache is bounded
(two generations of CACHE_MAX), and one that fills up keeps the tokens in use instead
of forgetting every token at once. tests/support/token_cache_lua.py loads the filter
with a signature stand-in that counts its calls.
"""

from __future__ import annotations

import time

import pytest

from tests.support.token_cache_lua import CLIENT_ID, bearer, token_cache

pytest.importorskip("lupa.luajit21")

SMALL = 3  # CACHE_MAX for these tests
NOW = int(time.time())


@pytest.fixture
def lua():
    return token_cache(SMALL)


def test_a_token_seen_again_is_not_verified_again(lua):
    token = bearer("u1", NOW)
    assert tuple(lua.request(token)) == (CLIENT_ID.encode(), b"u1")
    assert tuple(lua.request(token)) == (CLIENT_ID.encode(), b"u1")
    assert lua.verifications() == 1


def test_a_full_cache_keeps_the_tokens_in_use(lua):
    users = [f"u{i}".encode() for i in range(SMALL + 1)]
    tokens = {bearer(user.decode(), NOW): user for user in users}
    for token in tokens:
        lua.request(token)
    assert lua.verifications() == SMALL + 1  # the last one started a new generation
    # Those of the full generation are still remembered: used again, not verified again.
    for token in tokens:
        assert tuple(lua.request(token)) == (CLIENT_ID.encode(), tokens[token])
    assert lua.verifications() == SMALL + 1


def test_the_single_table_it_replaced_forgot_them_all():
    """The same sequence on the cache as it was: the check above is not vacuous."""
    lua = token_cache(SMALL, single_table=True)
    tokens = [bearer(f"u{i}", NOW) for i in range(SMALL + 1)]
    for token in tokens + tokens:
        lua.request(token)
    assert lua.verifications() > SMALL + 1


def test_tokens_no_longer_used_age_out_and_the_cache_stays_bounded(lua):
    old = bearer("old", NOW)
    lua.request(old)
    for i in range(2 * SMALL + 1):  # two generations' worth of other tokens
        lua.request(bearer(f"other{i}", NOW))
        assert lua.remembered() <= 2 * SMALL
    before = lua.verifications()
    assert tuple(lua.request(old)) == (CLIENT_ID.encode(), b"old")
    assert lua.verifications() == before + 1  # forgotten, so verified again
