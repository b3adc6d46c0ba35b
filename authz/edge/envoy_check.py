"""The protobuf edge: Envoy's CheckRequest in, a serialized CheckResponse out.

Nothing else in the service touches protobuf. Envoy's types come from xds-protos and
parse with protobuf's upb runtime. Responses are cached as bytes: the same decision
(tenant key, header set) yields the same bytes, so most checks serialize nothing.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2

from authz.errors import LimitReached
from authz.governance.model import (
    META_CLIENT_ID,
    META_INJECT_USAGE,
    META_LEASE,
    META_RESERVED,
    META_TOKEN_TYPE,
    META_USER,
)
from authz.pipeline.decision import PARTIAL_BODY_HEADER, Allow, CheckInput, Decision, Deny

CheckRequest = external_auth_pb2.CheckRequest

# google.rpc.Code values Envoy reads from CheckResponse.status.
_RPC_OK = 0
_RPC_PERMISSION_DENIED = 7
_RPC_UNAUTHENTICATED = 16
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_MAX_CACHED = 10_000


def request_headers(request: external_auth_pb2.CheckRequest) -> Mapping[str, str]:
    """The client's request headers, lower-case names, as Envoy sent them."""
    return request.attributes.request.http.headers  # type: ignore[no-any-return]


def check_input(request: external_auth_pb2.CheckRequest) -> CheckInput:
    """What the pipeline looks at: method, path, headers, and the body Envoy buffered
    (`raw_body` with pack_as_bytes, else the UTF-8 `body`; None when it sent none)."""
    http = request.attributes.request.http
    headers = http.headers
    body: bytes | None = http.raw_body
    if not body:
        text = http.body
        body = text.encode("utf-8") if text else None
    # Envoy flags a body it trimmed to max_request_bytes. Under flow control it may also
    # ask before the body is all there, unflagged: then the request's size (its
    # Content-Length, -1 when unknown) tells. A client's own copy of the header is
    # removed before ext_authz runs (envoy.yaml), so the flag is Envoy's.
    partial = body is not None and (
        headers.get(PARTIAL_BODY_HEADER, "").lower() == "true" or http.size > len(body))
    return CheckInput(http.method, http.path, headers, body, partial)


def _allow_bytes(decision: Allow) -> bytes:
    response = external_auth_pb2.CheckResponse()
    response.status.code = _RPC_OK
    ok = response.ok_response
    for name, value in decision.set_headers:
        option = ok.headers.add()
        option.header.key = name
        option.header.value = value
        option.append_action = _OVERWRITE
    ok.headers_to_remove.extend(decision.remove_headers)
    # Fields set one by one: Struct.update() costs several µs per uncached (leased) Allow.
    fields = response.dynamic_metadata.fields
    fields[META_CLIENT_ID].string_value = decision.client_id
    fields[META_TOKEN_TYPE].string_value = decision.token_type
    fields[META_USER].string_value = decision.user
    if decision.inject_usage:
        fields[META_INJECT_USAGE].string_value = "1"
    return bytes(response.SerializeToString())


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes([n]) for n in range(0x80)]


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


_CHECK_RESPONSE_DYNAMIC_METADATA = 4  # CheckResponse.dynamic_metadata (Struct)
_STRUCT_FIELDS = 1  # Struct.fields, a map: entries of key = 1, value = 2
_VALUE_NUMBER, _VALUE_STRING = 2, 3  # google.protobuf.Value.kind
_LEASE_KEY = _length_delimited(1, META_LEASE.encode())
# The reservation's map entry up to its 8-byte double (a fixed length).
_RESERVED_ENTRY_HEAD = _length_delimited(
    _STRUCT_FIELDS, _length_delimited(1, META_RESERVED.encode())
    + _length_delimited(2, bytes([_VALUE_NUMBER << 3 | 1]) + bytes(8)))[:-8]


def _lease_bytes(lease: str, reserved_tokens: int) -> bytes:
    """CheckResponse bytes holding only the lease and reservation metadata.

    A parser merges a message field that appears twice, and a map merges by key, so
    these bytes appended to the encoding of the same decision without its lease equal
    the encoding of the whole: the part shared by every request of a user is cached,
    and only this is built per request (by hand: a protobuf message costs ~3 µs here).
    """
    lease_value = _length_delimited(_VALUE_STRING, lease.encode())
    return _length_delimited(_CHECK_RESPONSE_DYNAMIC_METADATA, _length_delimited(
        _STRUCT_FIELDS, _LEASE_KEY + _length_delimited(2, lease_value))
        + _RESERVED_ENTRY_HEAD + struct.pack("<d", reserved_tokens))


def _deny_bytes(decision: Deny) -> bytes:
    error = decision.error
    response = external_auth_pb2.CheckResponse()
    response.status.code = _RPC_UNAUTHENTICATED if error.status == 401 else _RPC_PERMISSION_DENIED
    denied = response.denied_response
    # Envoy's StatusCode enum values are the HTTP status numbers themselves.
    denied.status.code = error.status
    headers = [("content-type", "application/json")]
    if isinstance(error, LimitReached):
        headers.append(("retry-after", str(error.retry_after_s)))
    for name, value in headers:
        option = denied.headers.add()
        option.header.key = name
        option.header.value = value
        option.append_action = _OVERWRITE
    denied.body = json.dumps(error.body())
    return bytes(response.SerializeToString())


class ResponseEncoder:
    """Decision → CheckResponse bytes, with a bounded cache of recent encodings."""

    def __init__(self, max_entries: int = _MAX_CACHED) -> None:
        self._max_entries = max_entries
        self._allow: dict[Allow, bytes] = {}
        # Leased decisions, by everything but the lease: their shared encoding.
        self._leased: dict[tuple[object, ...], bytes] = {}
        self._deny: dict[tuple[type, int, str, int], bytes] = {}

    def encode(self, decision: Decision) -> bytes:
        if isinstance(decision, Allow):
            if decision.lease:
                # A lease is unique to one request: the rest of the decision is cached,
                # and the lease appended to it.
                shared_key = (decision.client_id, decision.token_type, decision.set_headers,
                              decision.remove_headers, decision.user, decision.inject_usage)
                shared = self._leased.get(shared_key)
                if shared is None:
                    shared = _allow_bytes(dataclasses.replace(decision, lease="",
                                                              reserved_tokens=0))
                    if len(self._leased) >= self._max_entries:
                        self._leased.pop(next(iter(self._leased)))
                    self._leased[shared_key] = shared
                return shared + _lease_bytes(decision.lease, decision.reserved_tokens)
            return self._allow_cached(decision)
        error = decision.error
        key = (type(error), error.status, error.detail,
               error.retry_after_s if isinstance(error, LimitReached) else 0)
        cached = self._deny.get(key)
        if cached is None:
            cached = _deny_bytes(decision)
            if len(self._deny) < 256:
                self._deny[key] = cached
        return cached

    def _allow_cached(self, decision: Allow) -> bytes:
        cached = self._allow.get(decision)
        if cached is None:
            cached = _allow_bytes(decision)
            if len(self._allow) >= self._max_entries:
                self._allow.pop(next(iter(self._allow)))
            self._allow[decision] = cached
        return cached
