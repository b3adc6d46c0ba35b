"""The fast path's metering log: Envoy's OpenTelemetry access logger, one record per
request the fast path decided alone (AUTHZ_FAST_PATH=on).

Such a request holds no lease or reservation, so the settlement needs only a few fields,
and Envoy formats them into one string (authz/fastpath/blocks.py METER_LOG_FIELDS) at a
fraction of the cost of a gRPC access-log entry, which carries every header, timing and
metadata namespace (measured: about 25 µs of Envoy and 30 µs of this service per
request, docs/benchmark.md). Envoy sends the records in batches (LogsService/Export, on
this service's gRPC port); each becomes a CompletedRequest and is settled as an access
log entry is (edge/access_log.py). Protobuf stays here; the OpenTelemetry types (from
xds-protos) are loaded only when the fast path is on. A malformed record is counted and
skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from authz.edge.access_log import Settle, int_or_none, settle_logged
from authz.edge.grpc_method import one_method_handler
from authz.fastpath.blocks import METER_LOG_FIELDS
from authz.governance.model import CompletedRequest

LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
_MISSING = "-"  # what Envoy prints for a value it does not have


def completed_request(body: str) -> CompletedRequest | None:
    """One record's body as a CompletedRequest; None when it is not one of ours."""
    parts = body.split("\t", len(METER_LOG_FIELDS) - 1)
    if len(parts) != len(METER_LOG_FIELDS):
        return None
    status, flags, received, sent, input_tokens, output_tokens, events, client_id, user = (
        parts)
    # The Lua filter sets both on every request it decides (a non-empty subject).
    if client_id in ("", _MISSING):
        return None
    return CompletedRequest(
        client_id=client_id,
        user=user,
        lease="",
        reserved_tokens=0,
        status=int_or_none(status) or 0,
        response_flags="" if flags == _MISSING else flags,
        request_body_bytes=int_or_none(received) or 0,
        response_body_bytes=int_or_none(sent) or 0,
        input_tokens=int_or_none(input_tokens),
        output_tokens=int_or_none(output_tokens),
        events=int_or_none(events) or 0,
    )


def record_bodies(request: Any) -> Iterator[str]:
    """The string body of every log record in an ExportLogsServiceRequest.

    Walked by field number: the OpenTelemetry types importable here are the copy that
    xds-protos ships (Envoy's API imports them), which is older than the protocol Envoy
    speaks and names the same fields differently (`instrumentation_library_logs` and
    `logs` for `scope_logs` and `log_records`); the wire format is the same."""
    for resource_logs in request.resource_logs:
        for scope_logs in getattr(resource_logs, _field_name(resource_logs, 2)):
            for record in getattr(scope_logs, _field_name(scope_logs, 2)):
                yield record.body.string_value


def _field_name(message: Any, number: int) -> str:
    return str(message.DESCRIPTOR.fields_by_number[number].name)


class MeterLogServicer:
    def __init__(self, settle: Settle) -> None:
        self._settle = settle
        self.records = 0
        self.skipped = 0

    async def export(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> bytes:
        for body in record_bodies(request):
            done = completed_request(body)
            if done is None:
                self.skipped += 1
                continue
            self.records += 1
            settle_logged(self._settle, done)
        return b""  # an empty ExportLogsServiceResponse


def meter_log_handler(servicer: MeterLogServicer) -> grpc.GenericRpcHandler:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    # xds-protos ships this module without type stubs for its messages.
    request_type: Any = logs_service_pb2.ExportLogsServiceRequest  # type: ignore[attr-defined]
    return one_method_handler(LOGS_SERVICE, "Export", grpc.unary_unary_rpc_method_handler,
                              servicer.export, request_type)
