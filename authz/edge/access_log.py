"""Envoy's gRPC access log service (ALS): one HTTPAccessLogEntry per finished request.

Envoy sends, over one long-lived stream per Envoy worker, the entries of requests the
ext_authz service allowed (the template's filter: ext_authz `client_id` metadata
present), however they ended. Each entry becomes a CompletedRequest and is settled:
the lease and reservation released, the tokens recorded. Protobuf stays here; a
malformed entry is logged and skipped, never ends the stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from authz.edge.grpc_method import one_method_handler
from authz.governance import model
from authz.governance.model import CompletedRequest

log = logging.getLogger(__name__)

ACCESS_LOG_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
StreamMessage = als_pb2.StreamAccessLogsMessage

# Envoy's short response-flag strings (as %RESPONSE_FLAGS% prints them), by the field
# of envoy.data.accesslog.v3.ResponseFlags.
_FLAG_CODES = {
    "failed_local_healthcheck": "LH", "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT", "local_reset": "LR", "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF", "upstream_connection_termination": "UC",
    "upstream_overflow": "UO", "no_route_found": "NR", "delay_injected": "DI",
    "fault_injected": "FI", "rate_limited": "RL", "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC", "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI", "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE", "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF", "no_filter_config_found": "NFCF",
    "duration_timeout": "DT", "upstream_protocol_error": "UPE", "no_cluster_found": "NC",
    "overload_manager": "OM", "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DR",
}

Settle = Callable[[CompletedRequest], None]


def settle_logged(settle: Settle, done: CompletedRequest) -> None:
    """Settle one finished request; a failure is logged, never raised into the stream
    that delivered it."""
    try:
        settle(done)
    except Exception:
        log.exception("settling a finished request failed",
                      extra={"client_id": done.client_id})


def response_flags(flags: accesslog_pb2.ResponseFlags) -> str:
    """Envoy's short form, comma-separated, "" when none."""
    codes = [code for name, code in _FLAG_CODES.items() if getattr(flags, name, False)]
    if flags.HasField("unauthorized_details"):
        codes.append("UAEX")
    return ",".join(codes)


def _value(fields: Any, key: str) -> Any:
    """A google.protobuf.Value's content (number, string or bool); None when absent."""
    if key not in fields:
        return None
    value = fields[key]
    kind = value.WhichOneof("kind")
    return None if kind in (None, "null_value") else getattr(value, kind)


def int_or_none(raw: Any) -> int | None:
    """Numbers may arrive as numbers or strings (metadata set from Lua or headers)."""
    if raw is None or isinstance(raw, bool):
        return None
    try:
        number = int(float(raw))
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def completed_request(entry: accesslog_pb2.HTTPAccessLogEntry) -> CompletedRequest | None:
    """One entry as a CompletedRequest; None when it is not an allowed request's."""
    common = entry.common_properties
    metadata = common.metadata.filter_metadata
    if EXT_AUTHZ_NAMESPACE not in metadata:
        return None
    authz = metadata[EXT_AUTHZ_NAMESPACE].fields
    client_id = _value(authz, model.META_CLIENT_ID)
    if not isinstance(client_id, str) or not client_id:
        return None
    user = _value(authz, model.META_USER)
    lease = _value(authz, model.META_LEASE)
    usage = (metadata[model.USAGE_NAMESPACE].fields
             if model.USAGE_NAMESPACE in metadata else {})
    response = entry.response
    return CompletedRequest(
        client_id=client_id,
        user=user if isinstance(user, str) else "",
        lease=lease if isinstance(lease, str) else "",
        reserved_tokens=int_or_none(_value(authz, model.META_RESERVED)) or 0,
        status=response.response_code.value if response.HasField("response_code") else 0,
        response_flags=response_flags(common.response_flags),
        request_body_bytes=entry.request.request_body_bytes,
        response_body_bytes=response.response_body_bytes,
        input_tokens=int_or_none(_value(usage, model.USAGE_INPUT)),
        output_tokens=int_or_none(_value(usage, model.USAGE_OUTPUT)),
        events=int_or_none(_value(usage, model.USAGE_EVENTS)) or 0,
    )


class AccessLogServicer:
    """StreamAccessLogs: a client stream of batches; each entry is settled in turn
    (settle only queues work, so a batch never holds the event loop long)."""

    def __init__(self, settle: Settle) -> None:
        self._settle = settle
        self.entries = 0
        self.skipped = 0

    def handle(self, message: als_pb2.StreamAccessLogsMessage) -> None:
        if not message.HasField("http_logs"):
            return
        for entry in message.http_logs.log_entry:
            try:
                done = completed_request(entry)
            except Exception:  # a malformed entry must not end the stream
                self.skipped += 1
                log.warning("access log entry skipped: cannot read it", exc_info=True)
                continue
            if done is None:
                self.skipped += 1
                continue
            self.entries += 1
            settle_logged(self._settle, done)

    async def stream(self, requests: AsyncIterator[als_pb2.StreamAccessLogsMessage],
                     context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        async for message in requests:
            self.handle(message)
        return b""  # StreamAccessLogsResponse is empty


def access_log_handler(servicer: AccessLogServicer) -> grpc.GenericRpcHandler:
    return one_method_handler(ACCESS_LOG_SERVICE, "StreamAccessLogs",
                              grpc.stream_unary_rpc_method_handler, servicer.stream,
                              StreamMessage)
