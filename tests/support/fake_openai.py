"""A local stand-in for the OpenAI API: HTTP/1.1 (keep-alive) over TLS, asyncio + h11.

In tests, :class:`FakeOpenAI` runs in a background thread with its own event loop
and records every request it receives. For benchmarks, run it as its own process
(:class:`FakeOpenAIProcess`, or ``python -m tests.support.fake_openai``), which does
not record and can pre-fork several workers sharing one listening socket.

Endpoints (response shapes follow OpenAI's, so the official SDK parses them):

- ``POST /v1/chat/completions``: chat.completion with ``usage``; ``"stream": true``
  gives SSE ``chat.completion.chunk`` events then ``data: [DONE]``. As OpenAI does: with
  ``stream_options.include_usage`` every chunk carries ``"usage":null`` and a last chunk
  with ``"choices":[]`` carries the usage; without it no chunk mentions usage.
- ``POST /v1/responses``: a response object with ``usage``; ``"stream": true`` gives
  Responses API SSE events (``response.created`` … ``response.output_text.delta`` …
  ``response.completed``, whose ``response.usage`` is the usage).
- ``POST /v1/embeddings``: a list of embeddings, ``usage`` with ``prompt_tokens`` only.
- ``POST /v1/images/generations``: one tiny base64 image, gpt-image-1 ``usage``.
- ``POST /v1/audio/speech``: deterministic binary audio (:func:`audio_bytes`), chunked.
- ``POST /v1/files``: multipart upload read as a stream; ``bytes`` is the exact size
  of the file part (its sha256 is in the ``x-test-file-sha256`` response header).
- ``GET /v1/models``, ``GET /v1/models/{id}``.
- ``ANY /v1/test/status/{code}``: that status, an error body and
  ``set-cookie``/``x-upstream-marker``/``x-request-id: req_test`` headers.
- ``ANY /v1/test/echo``: JSON of the received method, path, query, headers, body digest.
- ``ANY /v1/test/stream?chunks=N&interval_ms=M``: N events ``data: {"i": k}``.
- ``ANY /v1/test/stall?after=K``: K events, then silence until the client leaves.
- ``ANY /v1/test/reset?after=K``: K events, then a TCP RST.
- ``ANY /v1/test/drop``: RST after reading the request, before any response byte.
- ``ANY /v1/test/close``: FIN after reading the request, before any response byte.
- ``ANY /v1/test/delay?ms=M``: answer 200 JSON after M ms.
- ``ANY /v1/test/bytes?size=N&chunk=C``: N deterministic bytes in chunks of C.
- anything else: 404 in OpenAI's error shape.

Knobs sent as request headers (work through the relay, which forwards headers):
``x-test-chunks`` (stream chunk count, default 5), ``x-test-chunk-interval-ms``
(delay between stream chunks, default 0; also the query parameter
``x_test_chunk_interval_ms``, for browsers), ``x-test-delay-ms`` (delay before the
response headers of any endpoint), ``x-test-audio-bytes`` (speech size; also the
JSON body field ``x_test_bytes``).

Usage numbers are deterministic from the request (its body size and ``x-test-chunks``)
and differ between requests; :meth:`FakeOpenAI.reported_usage` gives what was reported
for a response's ``x-request-id``, so tests can check metering exactly.

Every response carries ``x-request-id`` and ``openai-processing-ms``. Paths are
recorded and routed as received (not percent-decoded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import functools
import hashlib
import http
import json
import os
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import h11

from tests.support.processes import ManagedProcess

__all__ = [
    "FakeOpenAI",
    "FakeOpenAIProcess",
    "MultipartPart",
    "RecordedRequest",
    "StreamingMultipartParser",
    "audio_bytes",
    "main",
]

DEFAULT_AUDIO_BYTES = 256 * 1024
DEFAULT_CHUNKS = 5
_READ_SIZE = 64 * 1024
_KEEP_BODY_LIMIT = 1024 * 1024  # bodies up to this size are kept for JSON parsing
_PERIOD = 256
_PATTERN = bytes((i * 31 + 7) & 0xFF for i in range(_PERIOD))
KNOWN_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-5",
    "tts-1",
    "whisper-1",
    "text-embedding-3-small",
)


def audio_bytes(n: int = DEFAULT_AUDIO_BYTES, offset: int = 0) -> bytes:
    """The deterministic bytes the fake sends for audio and /v1/test/bytes.

    ``audio_bytes(n)`` is the whole body of an ``n``-byte response; ``offset``
    gives the slice starting there (the pattern repeats every 256 bytes).
    """
    start = offset % _PERIOD
    reps = (start + n) // _PERIOD + 1
    return (_PATTERN * reps)[start : start + n]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class MultipartPart:
    """One part of a multipart/form-data body, digested while streaming."""

    name: str | None
    filename: str | None
    content_type: str | None
    size: int
    sha256: str
    value: bytes | None  # kept for small parts without a filename, else None


@dataclass(frozen=True)
class RecordedRequest:
    """What the fake upstream received. ``headers`` names are lowercase, in order."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body_size: int
    body_sha256: str
    http_version: str = "1.1"
    complete: bool = True  # False when the client went away before the body ended
    multipart: tuple[MultipartPart, ...] = ()
    received_at: float = field(default_factory=time.time)

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def header_names(self) -> set[str]:
        return {k for k, _ in self.headers}


# --------------------------------------------------------------------------- multipart


class MultipartError(ValueError):
    pass


_PARAM_RX = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for m in _PARAM_RX.finditer(";" + rest):
        key, raw = m.group(1).lower(), m.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if key.endswith("*"):  # RFC 5987: charset'lang'percent-encoded
            from urllib.parse import unquote

            charset, _, enc = raw.partition("'")
            _, _, enc = enc.partition("'")
            raw = unquote(enc, encoding=charset or "utf-8")
            key = key[:-1]
        params[key] = raw
    return main.strip().lower(), params


class _PartBuilder:
    def __init__(self, raw_headers: bytes, keep_limit: int) -> None:
        self.name: str | None = None
        self.filename: str | None = None
        self.content_type: str | None = None
        for line in raw_headers.split(b"\r\n"):
            if not line:
                continue
            k, sep, v = line.decode("utf-8", "replace").partition(":")
            if not sep:
                raise MultipartError(f"bad part header line: {line!r}")
            k, v = k.strip().lower(), v.strip()
            if k == "content-disposition":
                _, params = _header_params(v)
                self.name = params.get("name")
                self.filename = params.get("filename")
            elif k == "content-type":
                self.content_type = v
        self.size = 0
        self._sha = hashlib.sha256()
        self._keep: bytearray | None = bytearray() if self.filename is None else None
        self._keep_limit = keep_limit

    def add(self, data: bytes) -> None:
        self.size += len(data)
        self._sha.update(data)
        if self._keep is not None:
            if len(self._keep) + len(data) > self._keep_limit:
                self._keep = None
            else:
                self._keep += data

    def finish(self) -> MultipartPart:
        return MultipartPart(
            name=self.name,
            filename=self.filename,
            content_type=self.content_type,
            size=self.size,
            sha256=self._sha.hexdigest(),
            value=bytes(self._keep) if self._keep is not None else None,
        )


class StreamingMultipartParser:
    """Incremental multipart/form-data parser (RFC 7578 / RFC 2046 framing).

    Holds at most one delimiter's worth of bytes of part content at a time; part
    bodies are counted and hashed as they pass. Feed with :meth:`feed`, then
    check :attr:`finished` and read :attr:`parts`.
    """

    _PREAMBLE, _AFTER_DELIM, _HEADERS, _BODY, _EPILOGUE = range(5)

    def __init__(self, boundary: str | bytes, *, keep_field_limit: int = 64 * 1024) -> None:
        b = boundary.encode("latin-1") if isinstance(boundary, str) else boundary
        if not b or len(b) > 200:
            raise MultipartError("bad boundary")
        self._delim = b"\r\n--" + b
        self._tail = len(self._delim) - 1
        self._buf = bytearray(b"\r\n")  # lets the first delimiter match like the others
        self._state = self._PREAMBLE
        self._cur: _PartBuilder | None = None
        self._keep_limit = keep_field_limit
        self.parts: list[MultipartPart] = []
        self.finished = False

    @classmethod
    def from_content_type(cls, content_type: str) -> StreamingMultipartParser:
        kind, params = _header_params(content_type)
        if kind != "multipart/form-data" or "boundary" not in params:
            raise MultipartError(f"not multipart/form-data with a boundary: {content_type!r}")
        return cls(params["boundary"])

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            st = self._state
            if st == self._BODY:
                assert self._cur is not None
                i = buf.find(self._delim)
                if i < 0:
                    n = len(buf) - self._tail
                    if n > 0:
                        self._cur.add(bytes(buf[:n]))
                        del buf[:n]
                    return
                self._cur.add(bytes(buf[:i]))
                del buf[: i + len(self._delim)]
                self.parts.append(self._cur.finish())
                self._cur = None
                self._state = self._AFTER_DELIM
            elif st == self._PREAMBLE:
                i = buf.find(self._delim)
                if i < 0:
                    if len(buf) > self._tail:
                        del buf[: len(buf) - self._tail]
                    return
                del buf[: i + len(self._delim)]
                self._state = self._AFTER_DELIM
            elif st == self._AFTER_DELIM:
                if len(buf) < 2:
                    return
                if buf[:2] == b"--":
                    self.finished = True
                    self._state = self._EPILOGUE
                    continue
                j = buf.find(b"\r\n")
                if j < 0:
                    if len(buf) > 1024:
                        raise MultipartError("garbage after boundary")
                    return
                if buf[:j].strip(b" \t"):
                    raise MultipartError("garbage after boundary")
                del buf[: j + 2]
                self._state = self._HEADERS
            elif st == self._HEADERS:
                if buf[:2] == b"\r\n":
                    raw = b""
                    del buf[:2]
                else:
                    j = buf.find(b"\r\n\r\n")
                    if j < 0:
                        if len(buf) > 64 * 1024:
                            raise MultipartError("part headers too large")
                        return
                    raw = bytes(buf[:j])
                    del buf[: j + 4]
                self._cur = _PartBuilder(raw, self._keep_limit)
                self._state = self._BODY
            else:  # epilogue: ignored
                buf.clear()
                return


# --------------------------------------------------------------------------- helpers


class _ClientGone(Exception):
    """The client closed or reset the connection."""


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


@functools.cache
def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _error_obj(
    message: str, type_: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> bytes:
    return _dumps(_error_obj(message, type_, code))


def _int_arg(value: str | None, default: int, lo: int = 0, hi: int = 10**9) -> int:
    if value is None or value == "":
        return default
    try:
        return max(lo, min(hi, int(float(value))))
    except ValueError:
        return default


def _gen_id(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


# --------------------------------------------------------------------------- connection

JSONHeaders = list[tuple[bytes, bytes]]
_JSON_CT: tuple[bytes, bytes] = (b"content-type", b"application/json")
_SSE_HEADERS: JSONHeaders = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class _Request:
    """A request being served: its head, its body digest, and routing inputs."""

    def __init__(self, ev: h11.Request) -> None:
        self.method = ev.method.decode("ascii", "replace")
        target = ev.target.decode("latin-1")
        self.path, _, self.query = target.partition("?")
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers]
        self.http_version = ev.http_version.decode("ascii", "replace")
        self.started = time.perf_counter()
        self.body_size = 0
        self.body_sha = hashlib.sha256()
        self.body: bytes | None = None
        self.complete = False
        self.multipart: StreamingMultipartParser | None = None
        self.multipart_error: str | None = None
        #: The x-request-id this request's response carries.
        self.request_id = _gen_id("req_")

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def qs(self, name: str) -> str | None:
        vals = parse_qs(self.query).get(name)
        return vals[0] if vals else None

    def json(self) -> dict[str, Any] | None:
        if not self.body:
            return {}
        try:
            obj = json.loads(self.body)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    def record(self) -> RecordedRequest:
        return RecordedRequest(
            method=self.method,
            path=self.path,
            query=self.query,
            headers=list(self.headers),
            body_size=self.body_size,
            body_sha256=self.body_sha.hexdigest(),
            http_version=self.http_version,
            complete=self.complete,
            multipart=tuple(self.multipart.parts) if self.multipart else (),
        )


class _Connection:
    def __init__(
        self, app: _App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.app = app
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.req: _Request | None = None
        self.response_started = False

    # -- io ------------------------------------------------------------------

    async def _next_event(self) -> Any:
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                try:
                    data = await self.reader.read(_READ_SIZE)
                except (ConnectionError, ssl.SSLError) as exc:
                    raise _ClientGone(repr(exc)) from exc
                self.conn.receive_data(data)
                continue
            return ev

    async def _write(self, *events: Any, flush: bool = True) -> None:
        out = b"".join(self.conn.send(e) or b"" for e in events)
        try:
            self.writer.write(out)
            if flush:
                await self.writer.drain()
        except (ConnectionError, ssl.SSLError, RuntimeError) as exc:
            raise _ClientGone(repr(exc)) from exc

    def _base_headers(self, extra: Iterable[tuple[bytes, bytes]]) -> JSONHeaders:
        assert self.req is not None
        ms = int((time.perf_counter() - self.req.started) * 1000)
        extra = list(extra)
        names = {k for k, _ in extra}
        base: JSONHeaders = [(b"date", _http_date())]
        if b"x-request-id" not in names:
            base.append((b"x-request-id", self.req.request_id.encode()))
        base.append((b"openai-processing-ms", str(ms).encode()))
        base.append((b"openai-version", b"2020-10-01"))
        return base + extra

    async def respond(
        self, status: int, body: bytes = b"", headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        """A whole response with Content-Length."""
        assert self.req is not None
        hdrs = self._base_headers(headers)
        no_body = self.req.method == "HEAD" or status in (204, 304)
        if status not in (204, 304):
            hdrs.append((b"content-length", str(len(body)).encode()))
        self.response_started = True
        events: list[Any] = [h11.Response(status_code=status, headers=hdrs, reason=_reason(status))]
        if body and not no_body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await self._write(*events)

    async def respond_json(
        self, status: int, obj: Any, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        await self.respond(status, _dumps(obj), [_JSON_CT, *headers])

    async def start_stream(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Response head without Content-Length: h11 uses chunked encoding."""
        hdrs = self._base_headers(headers)
        self.response_started = True
        await self._write(h11.Response(status_code=status, headers=hdrs, reason=_reason(status)))

    async def send(self, data: bytes) -> None:
        if data and self.req is not None and self.req.method != "HEAD":
            await self._write(h11.Data(data=data))

    async def end_stream(self) -> None:
        await self._write(h11.EndOfMessage())

    def abort_with_rst(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                # l_onoff=1, l_linger=0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def flushed(self, max_wait: float = 2.0) -> None:
        """Wait (bounded) until everything written has gone to the kernel."""
        deadline = time.monotonic() + max_wait
        transport = self.writer.transport
        # asyncio has no "buffer empty" event for transports: poll briefly.
        while transport.get_write_buffer_size() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    async def wait_client_gone(self) -> None:
        """Read and discard until EOF or error: the client has gone away."""
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            while await self.reader.read(_READ_SIZE):
                pass

    # -- request body --------------------------------------------------------

    async def _read_body(self, req: _Request, keep: bool) -> None:
        if self.conn.they_are_waiting_for_100_continue:
            await self._write(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
        kept: bytearray | None = bytearray() if keep else None
        while True:
            ev = await self._next_event()
            if isinstance(ev, h11.Data):
                data = bytes(ev.data)
                req.body_size += len(data)
                req.body_sha.update(data)
                if req.multipart is not None and req.multipart_error is None:
                    try:
                        req.multipart.feed(data)
                    except MultipartError as exc:
                        req.multipart_error = str(exc)
                if kept is not None:
                    if len(kept) + len(data) > _KEEP_BODY_LIMIT:
                        kept = None
                    else:
                        kept += data
            elif isinstance(ev, h11.EndOfMessage):
                req.complete = True
                req.body = bytes(kept) if kept is not None else None
                return
            elif isinstance(ev, h11.ConnectionClosed):
                raise _ClientGone("closed mid-body")

    # -- main loop -----------------------------------------------------------

    async def serve(self) -> None:
        try:
            while True:
                ev = await self._next_event()
                if not isinstance(ev, h11.Request):
                    return  # ConnectionClosed
                await self._one(ev)
                if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                    return
                self.conn.start_next_cycle()
                self.req = None
                self.response_started = False
        except h11.RemoteProtocolError as exc:
            await self._bad_request(exc)
        except (_ClientGone, ConnectionError, ssl.SSLError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:
            self.writer.transport.abort()
            raise
        finally:
            if not self.writer.transport.is_closing():
                self.writer.close()

    async def _bad_request(self, exc: h11.RemoteProtocolError) -> None:
        """A bare 400 for a request h11 could not parse (no handler ran)."""
        if self.response_started or self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = _error(f"bad request: {exc}")
        hdrs = [
            (b"date", _http_date()),
            (b"x-request-id", _gen_id("req_").encode()),
            (b"openai-processing-ms", b"0"),
            _JSON_CT,
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        status = exc.error_status_hint
        with contextlib.suppress(Exception):
            await self._write(
                h11.Response(status_code=status, headers=hdrs, reason=_reason(status)),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )

    async def _one(self, ev: h11.Request) -> None:
        req = _Request(ev)
        self.req = req
        handler, keep = self.app.route(req)
        if req.method == "POST" and req.path == "/v1/files":
            try:
                req.multipart = StreamingMultipartParser.from_content_type(
                    req.header("content-type") or ""
                )
            except MultipartError as exc:
                req.multipart_error = str(exc)
        try:
            await self._read_body(req, keep)
        except BaseException:
            self.app.record(req)
            raise
        self.app.record(req)
        delay = _int_arg(req.header("x-test-delay-ms"), 0, 0, 3_600_000)
        if delay:
            await asyncio.sleep(delay / 1000)
        try:
            await handler(self, req)
        except (_ClientGone, asyncio.CancelledError):
            raise
        except Exception:
            self.app.errors.append(traceback.format_exc())
            if not self.response_started:
                await self.respond(500, _error("fake upstream crashed", "server_error"), [_JSON_CT])
            else:
                self.writer.transport.abort()
                raise _ClientGone("handler failed mid-response") from None


# --------------------------------------------------------------------------- the app

Handler = Callable[[_Connection, _Request], Awaitable[None]]


def _chunk_interval(req: _Request) -> float:
    # Also as a query parameter: a page cannot send x-test-* headers through a
    # relay whose CORS preflight allows only the openai SDK's own headers.
    raw = req.header("x-test-chunk-interval-ms") or req.qs("x_test_chunk_interval_ms")
    return _int_arg(raw, 0, 0, 3_600_000) / 1000


def _words(n: int) -> list[str]:
    base = ["Hello", " from", " the", " fake", " upstream"]
    return [base[i] if i < len(base) else f" w{i}" for i in range(n)]


def _tokens(c: _Connection, req: _Request, n: int) -> tuple[int, int]:
    """The (input, output) tokens this request is charged, recorded for the tests:
    deterministic from the request, different for different bodies."""
    tokens = 3 + req.body_size // 4, n + req.body_size % 7
    c.app.report(req.request_id, tokens)
    return tokens


def _usage_chat(tokens: tuple[int, int]) -> dict[str, Any]:
    prompt, completion = tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 1, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _usage_responses(tokens: tuple[int, int]) -> dict[str, Any]:
    input_tokens, output_tokens = tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": input_tokens + output_tokens,
    }


async def _bad_json(c: _Connection) -> None:
    await c.respond_json(400, _error_obj("We could not parse the JSON body of your request."))


async def h_chat(c: _Connection, req: _Request) -> None:
    body = req.json()
    if body is None:
        await _bad_json(c)
        return
    model = str(body.get("model") or "gpt-4o-mini")
    cid = _gen_id("chatcmpl-")
    created = int(time.time())
    n = _int_arg(req.header("x-test-chunks"), DEFAULT_CHUNKS, 1, 100_000)
    words = _words(n)
    tokens = _tokens(c, req, n)
    if not body.get("stream"):
        await c.respond_json(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(words),
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage_chat(tokens),
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            },
        )
        return
    interval = _chunk_interval(req)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return out

    await c.start_stream(200, _SSE_HEADERS)
    for i, w in enumerate(words):
        if i and interval:
            await asyncio.sleep(interval)
        delta: dict[str, Any] = {"content": w}
        if i == 0:
            delta = {"role": "assistant", "content": w, "refusal": None}
        await c.send(_sse(chunk(delta, None)))
    await c.send(_sse(chunk({}, "stop")))
    if include_usage:
        final = chunk({}, None)
        final["choices"] = []
        final["usage"] = _usage_chat(tokens)
        await c.send(_sse(final))
    await c.send(b"data: [DONE]\n\n")
    await c.end_stream()


def _response_obj(
    rid: str, model: str, created: int, status: str, text: str | None,
    tokens: tuple[int, int],
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if text is not None:
        output.append(
            {
                "id": "msg_" + rid[5:],
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        )
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": _usage_responses(tokens) if status == "completed" else None,
        "user": None,
        "metadata": {},
    }


async def h_responses(c: _Connection, req: _Request) -> None:
    body = req.json()
    if body is None:
        await _bad_json(c)
        return
    model = str(body.get("model") or "gpt-4o-mini")
    rid = _gen_id("resp_")
    created = int(time.time())
    n = _int_arg(req.header("x-test-chunks"), DEFAULT_CHUNKS, 1, 100_000)
    words = _words(n)
    text = "".join(words)
    tokens = _tokens(c, req, n)
    if not body.get("stream"):
        await c.respond_json(200, _response_obj(rid, model, created, "completed", text, tokens))
        return
    interval = _chunk_interval(req)
    seq = 0
    msg_id = "msg_" + rid[5:]

    async def emit(etype: str, payload: dict[str, Any]) -> None:
        nonlocal seq
        await c.send(_sse({"type": etype, "sequence_number": seq, **payload}, event=etype))
        seq += 1

    in_progress = _response_obj(rid, model, created, "in_progress", None, tokens)
    await c.start_stream(200, _SSE_HEADERS)
    await emit("response.created", {"response": in_progress})
    await emit("response.in_progress", {"response": in_progress})
    item = {"id": msg_id, "type": "message", "status": "in_progress", "role": "assistant"}
    await emit("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}})
    loc = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    await emit("response.content_part.added", {**loc, "part": empty_part})
    for i, w in enumerate(words):
        if i and interval:
            await asyncio.sleep(interval)
        await emit("response.output_text.delta", {**loc, "delta": w, "logprobs": []})
    await emit("response.output_text.done", {**loc, "text": text, "logprobs": []})
    part = {**empty_part, "text": text}
    await emit("response.content_part.done", {**loc, "part": part})
    done_item = {**item, "status": "completed", "content": [part]}
    await emit("response.output_item.done", {"output_index": 0, "item": done_item})
    final = _response_obj(rid, model, created, "completed", text, tokens)
    await emit("response.completed", {"response": final})
    await c.end_stream()


async def h_embeddings(c: _Connection, req: _Request) -> None:
    body = req.json()
    if body is None:
        await _bad_json(c)
        return
    raw = body.get("input")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    dims = _int_arg(str(body.get("dimensions") or ""), 8, 1, 4096)
    prompt = 3 + req.body_size // 4  # embeddings have no output tokens
    c.app.report(req.request_id, (prompt, 0))
    data = [
        {"object": "embedding", "index": i,
         "embedding": [round(((i + 1) * (k + 3) % 17) / 17 - 0.5, 6) for k in range(dims)]}
        for i in range(len(inputs))
    ]
    await c.respond_json(200, {
        "object": "list", "data": data,
        "model": str(body.get("model") or "text-embedding-3-small"),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    })


# A 1x1 transparent PNG.
_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


async def h_images(c: _Connection, req: _Request) -> None:
    body = req.json()
    if body is None:
        await _bad_json(c)
        return
    text, image = _tokens(c, req, 272)
    await c.respond_json(200, {
        "created": int(time.time()),
        "data": [{"b64_json": _PNG_B64}],
        "usage": {"total_tokens": text + image, "input_tokens": text, "output_tokens": image,
                  "input_tokens_details": {"text_tokens": text, "image_tokens": 0}},
    })


_AUDIO_TYPES = {
    "mp3": b"audio/mpeg",
    "opus": b"audio/opus",
    "aac": b"audio/aac",
    "flac": b"audio/flac",
    "wav": b"audio/wav",
    "pcm": b"audio/pcm",
}


async def _send_bytes(c: _Connection, req: _Request, size: int, chunk: int, ctype: bytes) -> None:
    """``audio_bytes(size)`` as a chunked body, one write per ``chunk`` bytes."""
    interval = _chunk_interval(req)
    window = _PATTERN * ((min(chunk, size) + _PERIOD) // _PERIOD + 1)
    await c.start_stream(200, [(b"content-type", ctype)])
    sent = 0
    while sent < size:
        if sent and interval:
            await asyncio.sleep(interval)
        n = min(chunk, size - sent)
        o = sent % _PERIOD
        await c.send(window[o : o + n])
        sent += n
    await c.end_stream()


async def h_speech(c: _Connection, req: _Request) -> None:
    body = req.json()
    if body is None:
        await _bad_json(c)
        return
    size = _int_arg(req.header("x-test-audio-bytes"), DEFAULT_AUDIO_BYTES, 0, 1 << 31)
    if "x_test_bytes" in body:
        size = _int_arg(str(body["x_test_bytes"]), size, 0, 1 << 31)
    ctype = _AUDIO_TYPES.get(str(body.get("response_format") or "mp3"), b"audio/mpeg")
    await _send_bytes(c, req, size, 16 * 1024, ctype)


async def h_files(c: _Connection, req: _Request) -> None:
    mp = req.multipart
    if mp is None or req.multipart_error or not mp.finished:
        why = req.multipart_error or "multipart body not terminated"
        await c.respond_json(400, _error_obj(f"Invalid multipart body: {why}"))
        return
    files = [p for p in mp.parts if p.filename is not None or p.name == "file"]
    if not files:
        await c.respond_json(400, _error_obj("Missing required parameter: 'file'."))
        return
    f = files[0]
    purpose = "assistants"
    for p in mp.parts:
        if p.name == "purpose" and p.value is not None:
            purpose = p.value.decode("utf-8", "replace")
    await c.respond_json(
        200,
        {
            "object": "file",
            "id": _gen_id("file-")[:29],
            "purpose": purpose,
            "filename": f.filename or "upload",
            "bytes": f.size,
            "created_at": int(time.time()),
            "expires_at": None,
            "status": "processed",
            "status_details": None,
        },
        [(b"x-test-file-sha256", f.sha256.encode())],
    )


def _model(mid: str) -> dict[str, Any]:
    owner = "openai" if not mid.startswith("gpt") else "system"
    return {"id": mid, "object": "model", "created": 1_700_000_000, "owned_by": owner}


async def h_models(c: _Connection, req: _Request) -> None:
    await c.respond_json(200, {"object": "list", "data": [_model(m) for m in KNOWN_MODELS]})


async def h_model(c: _Connection, req: _Request) -> None:
    mid = req.path[len("/v1/models/") :]
    if mid in KNOWN_MODELS:
        await c.respond_json(200, _model(mid))
    else:
        body = _error(
            f"The model '{mid}' does not exist", "invalid_request_error", "model_not_found"
        )
        await c.respond(404, body, [_JSON_CT])


async def h_status(c: _Connection, req: _Request) -> None:
    raw = req.path[len("/v1/test/status/") :]
    code = _int_arg(raw, 0)
    if not 200 <= code <= 599:
        await c.respond(400, _error(f"bad status {raw!r}"), [_JSON_CT])
        return
    body = _dumps({"error": {"message": f"upstream says {code}", "type": "test"}})
    await c.respond(
        code,
        body,
        [
            _JSON_CT,
            (b"set-cookie", b"upstream=1"),
            (b"x-upstream-marker", b"yes"),
            (b"x-request-id", b"req_test"),
        ],
    )


async def h_echo(c: _Connection, req: _Request) -> None:
    text: str | None = None
    if req.body is not None and len(req.body) <= 64 * 1024:
        with contextlib.suppress(UnicodeDecodeError):
            text = req.body.decode("utf-8")
    await c.respond_json(
        200,
        {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "headers": [[k, v] for k, v in req.headers],
            "http_version": req.http_version,
            "body_size": req.body_size,
            "body_sha256": req.body_sha.hexdigest(),
            "body": text,
        },
    )


async def _events(c: _Connection, req: _Request, n: int, interval: float) -> None:
    for i in range(n):
        if i and interval:
            await asyncio.sleep(interval)
        await c.send(_sse({"i": i}))


async def h_stream(c: _Connection, req: _Request) -> None:
    n = _int_arg(req.qs("chunks"), DEFAULT_CHUNKS, 0, 10_000_000)
    interval = _int_arg(req.qs("interval_ms"), 0, 0, 3_600_000) / 1000
    await c.start_stream(200, _SSE_HEADERS)
    await _events(c, req, n, interval)
    await c.end_stream()


async def h_stall(c: _Connection, req: _Request) -> None:
    k = _int_arg(req.qs("after"), 1, 0, 1_000_000)
    await c.start_stream(200, _SSE_HEADERS)
    await _events(c, req, k, 0)
    await c.wait_client_gone()
    raise _ClientGone("stall ended")


async def h_reset(c: _Connection, req: _Request) -> None:
    k = _int_arg(req.qs("after"), 1, 0, 1_000_000)
    await c.start_stream(200, _SSE_HEADERS)
    await _events(c, req, k, 0)
    await c.flushed()
    c.abort_with_rst()
    raise _ClientGone("reset sent")


async def h_drop(c: _Connection, req: _Request) -> None:
    c.abort_with_rst()
    raise _ClientGone("dropped")


async def h_close(c: _Connection, req: _Request) -> None:
    c.writer.close()
    raise _ClientGone("closed")


async def h_delay(c: _Connection, req: _Request) -> None:
    ms = _int_arg(req.qs("ms"), 0, 0, 3_600_000)
    await asyncio.sleep(ms / 1000)
    await c.respond_json(200, {"delayed_ms": ms})


async def h_bytes(c: _Connection, req: _Request) -> None:
    size = _int_arg(req.qs("size"), 1024, 0, 1 << 40)
    chunk = _int_arg(req.qs("chunk"), 64 * 1024, 1, 1 << 24)
    await _send_bytes(c, req, size, chunk, b"application/octet-stream")


async def h_not_found(c: _Connection, req: _Request) -> None:
    await c.respond(404, _error(f"Invalid URL ({req.method} {req.path})"), [_JSON_CT])


_EXACT: dict[tuple[str, str], tuple[Handler, bool]] = {
    ("POST", "/v1/chat/completions"): (h_chat, True),
    ("POST", "/v1/responses"): (h_responses, True),
    ("POST", "/v1/audio/speech"): (h_speech, True),
    ("POST", "/v1/embeddings"): (h_embeddings, True),
    ("POST", "/v1/images/generations"): (h_images, True),
    ("POST", "/v1/files"): (h_files, False),
    ("GET", "/v1/models"): (h_models, False),
}
_TEST: dict[str, Handler] = {
    "/v1/test/echo": h_echo,
    "/v1/test/stream": h_stream,
    "/v1/test/stall": h_stall,
    "/v1/test/reset": h_reset,
    "/v1/test/drop": h_drop,
    "/v1/test/close": h_close,
    "/v1/test/delay": h_delay,
    "/v1/test/bytes": h_bytes,
}


class _App:
    """Routing and recording, shared by every connection of one server."""

    def __init__(self, record: bool = True) -> None:
        self.recording = record
        self.errors: list[str] = []
        self.request_count = 0
        self._records: list[RecordedRequest] = []
        self._reported: dict[str, tuple[int, int]] = {}
        self._cond = threading.Condition()

    def report(self, request_id: str, tokens: tuple[int, int]) -> None:
        if self.recording:
            with self._cond:
                self._reported[request_id] = tokens

    def reported(self, request_id: str) -> tuple[int, int] | None:
        with self._cond:
            return self._reported.get(request_id)

    def route(self, req: _Request) -> tuple[Handler, bool]:
        hit = _EXACT.get(("GET" if req.method == "HEAD" else req.method, req.path))
        if hit is not None:
            return hit
        if req.path in _TEST:
            return _TEST[req.path], True
        if req.path.startswith("/v1/test/status/"):
            return h_status, False
        if req.method in ("GET", "HEAD") and req.path.startswith("/v1/models/"):
            return h_model, False
        return h_not_found, False

    def record(self, req: _Request) -> None:
        with self._cond:
            self.request_count += 1
            if self.recording:
                self._records.append(req.record())
            self._cond.notify_all()

    def snapshot(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._records)

    def clear(self) -> None:
        with self._cond:
            self._records.clear()
            self._reported.clear()
            self.errors.clear()

    def wait(self, n: int, timeout: float) -> list[RecordedRequest]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._records) >= n, timeout)
            if not ok:
                got = [f"{r.method} {r.target}" for r in self._records]
                raise TimeoutError(f"wanted {n} requests within {timeout}s, got {got}")
            return list(self._records)


async def _serve(
    app: _App,
    ssl_ctx: ssl.SSLContext | None,
    stop: asyncio.Event,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            sk = writer.get_extra_info("socket")
            if sk is not None:
                with contextlib.suppress(OSError):
                    sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _Connection(app, reader, writer).serve()
        except asyncio.CancelledError:
            # Server shutdown. Finish normally: asyncio's stream callback would log a
            # spurious traceback for a cancelled connection task (Python 3.11).
            writer.transport.abort()
        except Exception:
            app.errors.append(traceback.format_exc())
            writer.transport.abort()
        finally:
            tasks.discard(task)

    if sock is not None:
        server = await asyncio.start_server(
            on_conn,
            sock=sock,
            ssl=ssl_ctx,
            limit=_READ_SIZE * 2,
            ssl_handshake_timeout=10 if ssl_ctx else None,
        )
    else:
        server = await asyncio.start_server(
            on_conn,
            host,
            port,
            ssl=ssl_ctx,
            backlog=1024,
            reuse_address=True,
            limit=_READ_SIZE * 2,
            ssl_handshake_timeout=10 if ssl_ctx else None,
        )
    bound = server.sockets[0].getsockname()[1]
    if on_ready is not None:
        on_ready(bound)
    try:
        await stop.wait()
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def _ssl_context(
    certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str]
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.fspath(certfile), os.fspath(keyfile))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# --------------------------------------------------------------------------- public API


class FakeOpenAI:
    """The fake upstream in a background thread with its own event loop.

    ``certfile``/``keyfile`` None means plain HTTP. ``record=False`` keeps only a
    request counter (for long in-process benchmarks).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        *,
        record: bool = True,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("give both certfile and keyfile, or neither (plain HTTP)")
        self.host = host
        self._port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self._app = _App(record)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeOpenAI not started")
        return self._port

    @property
    def url(self) -> str:
        if self.tls:
            return f"https://localhost:{self.port}"
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot (a new list) of the requests received so far."""
        return self._app.snapshot()

    @property
    def request_count(self) -> int:
        return self._app.request_count

    @property
    def errors(self) -> list[str]:
        """Tracebacks of handler crashes (should stay empty)."""
        return list(self._app.errors)

    def clear(self) -> None:
        self._app.clear()

    def reported_usage(self, request_id: str) -> tuple[int, int] | None:
        """The (input, output) tokens the response with this x-request-id reported."""
        return self._app.reported(request_id)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests are recorded; returns them all."""
        return self._app.wait(n, timeout)

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("already started")
        ctx = _ssl_context(self.certfile, self.keyfile) if self.certfile and self.keyfile else None
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, args=(ctx,), name="fake-openai")
        self._thread.daemon = True
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("fake OpenAI did not start within 10s")
        if self._failure is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("fake OpenAI failed to start") from self._failure
        return self

    def _run(self, ctx: ssl.SSLContext | None) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._stop = asyncio.Event()

            def ready(port: int) -> None:
                self._port = port
                self._ready.set()

            loop.run_until_complete(
                _serve(self._app, ctx, self._stop, host=self.host, port=self._port, on_ready=ready)
            )
        except BaseException as exc:
            self._failure = exc
        finally:
            self._ready.set()
            loop.close()

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeOpenAIProcess:
    """The fake upstream as a separate process (for benchmarks; records nothing)."""

    def __init__(
        self,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 1,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "tests.support.fake_openai", "--host", host]
        argv += ["--port", str(port), "--workers", str(workers)]
        if certfile is None or keyfile is None:
            argv.append("--plain")
        else:
            argv += ["--cert", os.fspath(certfile), "--key", os.fspath(keyfile)]
        self.tls = certfile is not None
        self.host = host
        self._port = port
        repo_root = Path(__file__).resolve().parents[2]
        self.process = ManagedProcess(argv, log_path=log_path, cwd=repo_root, name="fake-openai")

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("not started")
        return self._port

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}" if self.tls else f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> FakeOpenAIProcess:
        self.process.start()
        m = self.process.wait_for_log(r"listening on \S+:(\d+)", timeout)
        self._port = int(m.group(1))
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.process.stop(timeout)

    def __enter__(self) -> FakeOpenAIProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- standalone


def _run_worker(
    sock: socket.socket,
    ctx: ssl.SSLContext | None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve(_App(record=False), ctx, stop, sock=sock, on_ready=on_ready)

    asyncio.run(body())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.fake_openai", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert", help="server certificate PEM")
    p.add_argument("--key", help="server key PEM")
    p.add_argument("--plain", action="store_true", help="serve plain HTTP (no TLS)")
    p.add_argument("--workers", type=int, default=1, help="pre-forked worker processes")
    args = p.parse_args(argv)
    if not args.plain and not (args.cert and args.key):
        p.error("--cert and --key are required unless --plain")
    ctx = None if args.plain else _ssl_context(args.cert, args.key)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    url = f"http://{args.host}:{port}" if args.plain else f"https://localhost:{port}"

    children: list[int] = []
    for _ in range(max(0, args.workers - 1)):
        pid = os.fork()
        if pid == 0:  # child worker
            try:
                _run_worker(sock, ctx)
            finally:
                os._exit(0)
        children.append(pid)

    def ready(_port: int) -> None:
        print(f"listening on {url} (workers={max(1, args.workers)})", flush=True)

    try:
        _run_worker(sock, ctx, ready)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
