"""The check path's RESP2 parser: replies split anywhere, nested arrays, errors, nulls."""

from __future__ import annotations

import asyncio
import gc

import pytest

from authz.governance.resp import RespConnection, RespError, _Protocol, encode


def test_encode() -> None:
    assert encode(("EVALSHA", "ab", 1, b"k")) == (
        b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = b""
        self.writes = 0
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)
        self.writes += 1

    def abort(self) -> None:
        self.aborted = True


def test_replies_matched_in_order_across_any_split() -> None:
    stream = (b"*2\r\n$24\r\nuser_requests_per_minute\r\n:45000\r\n"
              b"*0\r\n-NOSCRIPT No matching script\r\n$-1\r\n+OK\r\n"
              b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n")

    async def scenario(step: int) -> list[object]:
        protocol = _Protocol(timeout_s=5)
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
        protocol = _Protocol(timeout_s=5)
        protocol.connection_made(_Transport())
        waiting = [protocol.send(b"x"), protocol.send(b"y")]
        protocol.connection_lost(None)
        for future in waiting:
            with pytest.raises(ConnectionError):
                await future
        assert protocol.closed

    asyncio.run(scenario())


def test_commands_of_one_loop_turn_leave_in_one_write() -> None:
    async def scenario() -> None:
        protocol = _Protocol(timeout_s=5)
        transport = _Transport()
        protocol.connection_made(transport)
        futures = [protocol.send(encode(("PING",))) for _ in range(50)]
        assert transport.writes == 0  # nothing written until the turn ends
        await asyncio.sleep(0)
        assert transport.writes == 1
        assert transport.sent == encode(("PING",)) * 50
        protocol.data_received(b"+PONG\r\n" * 50)
        assert [await f for f in futures] == ["PONG"] * 50
        protocol.send(encode(("PING",)))
        await asyncio.sleep(0)
        assert transport.writes == 2

    asyncio.run(scenario())


def test_a_late_reply_fails_the_waiting_calls_and_drops_the_connection() -> None:
    async def scenario() -> None:
        protocol = _Protocol(timeout_s=0.05)
        transport = _Transport()
        protocol.connection_made(transport)
        first, second = protocol.send(b"a"), protocol.send(b"b")
        await asyncio.sleep(0)
        protocol.data_received(b"+OK\r\n")  # the first in time, the second never
        assert await first == "OK"
        with pytest.raises(TimeoutError):
            await second
        assert transport.aborted
        protocol.connection_lost(None)  # what the abort brings
        with pytest.raises(ConnectionError):
            await protocol.send(b"c")  # refused at once, never written

    asyncio.run(scenario())


def test_a_lost_connection_fails_a_batch_once_and_leaves_no_unretrieved_failure() -> None:
    unretrieved: list[dict[str, object]] = []

    async def scenario() -> str:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: unretrieved.append(context))
        connection = RespConnection("redis://127.0.0.1:1", timeout_s=5)
        protocol = _Protocol(timeout_s=5)
        protocol.connection_made(_Transport())
        connection._protocol = protocol
        batch = asyncio.ensure_future(connection.call_many([("PING",)] * 20))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        protocol.connection_lost(None)
        await asyncio.wait([batch])
        failure = repr(batch.exception())
        del batch  # with it the failure and its traceback, which hold the batch's frame
        gc.collect()
        await asyncio.sleep(0)
        return failure

    assert "ConnectionError" in asyncio.run(scenario())
    assert unretrieved == []
