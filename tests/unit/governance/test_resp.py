"""The check path's RESP2 parser: replies split anywhere, nested arrays, errors, nulls."""

from __future__ import annotations

import asyncio

import pytest

from authz.governance.resp import RespError, _Protocol, encode


def test_encode() -> None:
    assert encode(("EVALSHA", "ab", 1, b"k")) == (
        b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)


def test_replies_matched_in_order_across_any_split() -> None:
    stream = (b"*2\r\n$24\r\nuser_requests_per_minute\r\n:45000\r\n"
              b"*0\r\n-NOSCRIPT No matching script\r\n$-1\r\n+OK\r\n"
              b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n")

    async def scenario(step: int) -> list[object]:
        protocol = _Protocol()
        protocol.connection_made(_Transport())
        futures = [protocol.send(b"x") for _ in range(6)]
        for i in range(0, len(stream), step):
            protocol.data_received(stream[i:i + step])
        results: list[object] = []
        for future in futures:
            try:
                results.append(await future)
            except RespError as exc:
                results.append(f"error: {exc}")
        return results

    for step in (1, 2, 3, 7, len(stream)):
        assert asyncio.run(scenario(step)) == [
            [b"user_requests_per_minute", 45000], [], "error: NOSCRIPT No matching script",
            None, "OK", [[1], b""]]


def test_connection_lost_fails_every_waiting_call() -> None:
    async def scenario() -> None:
        protocol = _Protocol()
        protocol.connection_made(_Transport())
        waiting = [protocol.send(b"x"), protocol.send(b"y")]
        protocol.connection_lost(None)
        for future in waiting:
            with pytest.raises(ConnectionError):
                await future
        assert protocol.closed

    asyncio.run(scenario())
