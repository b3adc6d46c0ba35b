"""An experiment: the floor again, but as Envoy's HTTP ext_authz instead of gRPC.

Same work as bench/floor.py (one dict lookup of the Authorization header, a fixed
answer), over plain HTTP/1.1 keep-alive with asyncio.Protocol: Envoy's ``http_service``
sends the client's headers (Authorization among them) with no body, and an answer of
200 allows the request, its ``authorization`` header replacing the client's. Anything
else is the denial the client gets. The parsing here is the minimum for Envoy's
well-formed check requests; a real service would use a strict parser (httptools).

    python -m bench.floor_http --port N --tokens MAP.json   # {"<token>": "<api key>"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

DENY = (
    b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
    b'content-length: 34\r\n\r\n{"error": "Authentication failed"}'
)


def allow_bytes(api_key: str) -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nauthorization: Bearer {api_key}\r\ncontent-length: 0\r\n\r\n"
    ).encode("latin-1")


class CheckProtocol(asyncio.Protocol):
    def __init__(self, table: dict[bytes, bytes]) -> None:
        self.table = table
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        out = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[: end + 2].lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                length = int(head[i + 17 : head.find(b"\r\n", i + 2)])
            total = end + 4 + length
            if len(buffer) < total:
                break
            token = b""
            i = head.find(b"\r\nauthorization:")
            if i >= 0:
                # Header values keep their case: slice the original bytes.
                token = buffer[i + 16 : buffer.find(b"\r\n", i + 2)].strip()
            out.append(self.table.get(token, DENY))
            buffer = buffer[total:]
        self.buffer = buffer
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(host: str, port: int, table: dict[bytes, bytes]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: CheckProtocol(table), host, port, backlog=1024)
    print(f"floor-http listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_http", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", required=True, help="JSON map token -> api key")
    args = parser.parse_args(argv)
    with open(args.tokens, encoding="utf-8") as f:
        mapping: dict[str, str] = json.load(f)
    table = {f"Bearer {t}".encode(): allow_bytes(k) for t, k in mapping.items()}
    asyncio.run(serve(args.host, args.port, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
