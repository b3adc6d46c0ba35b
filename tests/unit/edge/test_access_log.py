"""The ALS servicer fed real envoy.data.accesslog.v3.HTTPAccessLogEntry protobufs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from authz.edge.access_log import (
    AccessLogServicer,
    completed_request,
    response_flags,
)
from authz.edge.meter_log import MeterLogServicer, _field_name
from authz.edge.meter_log import completed_request as from_record
from authz.governance.model import CompletedRequest


def entry(authz: dict[str, object] | None, usage: dict[str, object] | None = None, *,
          status: int | None = 200, request_bytes: int = 120, response_bytes: int = 900,
          **flags: bool) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    if status is not None:
        e.response.response_code.value = status
    e.request.request_body_bytes = request_bytes
    e.response.response_body_bytes = response_bytes
    metadata = e.common_properties.metadata.filter_metadata
    if authz is not None:
        s = struct_pb2.Struct()
        s.update(authz)
        metadata["envoy.filters.http.ext_authz"].CopyFrom(s)
    if usage is not None:
        s = struct_pb2.Struct()
        s.update(usage)
        metadata["relay.usage"].CopyFrom(s)
    for name, value in flags.items():
        setattr(e.common_properties.response_flags, name, value)
    return e


ALLOWED = {"client_id": "acme", "user": "uid-1", "token_type": "firebase",
           "lease": "rabc1", "reserved_tokens": 250}


def test_entry_with_usage() -> None:
    done = completed_request(entry(ALLOWED, {"input_tokens": 12, "output_tokens": 30,
                                             "events": 4}))
    assert done == CompletedRequest(
        client_id="acme", user="uid-1", lease="rabc1", reserved_tokens=250, status=200,
        response_flags="", request_body_bytes=120, response_body_bytes=900,
        input_tokens=12, output_tokens=30, events=4)


def test_client_gone_without_usage() -> None:
    done = completed_request(entry({"client_id": "acme", "user": "u"}, {"events": "7"},
                                   downstream_connection_termination=True))
    assert done is not None
    assert (done.lease, done.reserved_tokens, done.response_flags) == ("", 0, "DC")
    assert (done.input_tokens, done.output_tokens, done.events) == (None, None, 7)


def test_response_flags_short_strings() -> None:
    flags = accesslog_pb2.ResponseFlags(upstream_remote_reset=True, stream_idle_timeout=True)
    assert response_flags(flags) == "UR,SI"
    flags = accesslog_pb2.ResponseFlags()
    flags.unauthorized_details.reason = accesslog_pb2.ResponseFlags.Unauthorized.EXTERNAL_SERVICE
    assert response_flags(flags) == "UAEX"
    assert response_flags(accesslog_pb2.ResponseFlags()) == ""


def test_entries_not_from_an_allowed_request_are_skipped() -> None:
    assert completed_request(entry(None)) is None
    assert completed_request(entry({"user": "u"})) is None
    assert completed_request(entry({"client_id": 5})) is None


def test_malformed_values_read_as_absent() -> None:
    done = completed_request(entry({**ALLOWED, "reserved_tokens": "lots", "lease": 3},
                                   {"input_tokens": -4, "output_tokens": True, "events": None},
                                   status=None))
    assert done is not None
    assert (done.reserved_tokens, done.lease, done.status) == (0, "", 0)
    assert (done.input_tokens, done.output_tokens, done.events) == (None, None, 0)


def test_stream_settles_each_entry_and_survives_bad_ones() -> None:
    settled: list[CompletedRequest] = []

    def settle(done: CompletedRequest) -> None:
        if done.user == "explodes":
            raise RuntimeError("boom")
        settled.append(done)

    servicer = AccessLogServicer(settle)
    first = als_pb2.StreamAccessLogsMessage()
    first.identifier.log_name = "relay"
    first.http_logs.log_entry.extend([
        entry(ALLOWED, {"input_tokens": 1, "output_tokens": 2}),
        entry(None),
        entry({**ALLOWED, "user": "explodes"}),
        entry({**ALLOWED, "user": "second"}),
    ])
    tcp_only = als_pb2.StreamAccessLogsMessage()
    tcp_only.tcp_logs.log_entry.add()
    last = als_pb2.StreamAccessLogsMessage()
    last.http_logs.log_entry.append(entry({**ALLOWED, "user": "third"}))

    async def messages() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
        for message in (first, tcp_only, last):
            # Through the wire format, as gRPC hands them over.
            yield als_pb2.StreamAccessLogsMessage.FromString(message.SerializeToString())

    assert asyncio.run(servicer.stream(messages(), None)) == b""  # type: ignore[arg-type]
    assert [d.user for d in settled] == ["uid-1", "second", "third"]
    assert servicer.skipped == 1


# -- the fast path's metering log (edge/meter_log.py) ----------------------------------
def test_a_metering_record_is_read_as_envoy_formats_it():
    done = from_record("200\t-\t74\t609\t9\t10\t-\tacme\tuser\twith\ttabs")
    assert done == CompletedRequest(
        client_id="acme", user="user\twith\ttabs", lease="", reserved_tokens=0, status=200,
        response_flags="", request_body_bytes=74, response_body_bytes=609, input_tokens=9,
        output_tokens=10, events=0)
    cut = from_record("0\tDC,UR\t10\t0\t-\t-\t3\tacme\tu1")
    assert cut is not None
    assert (cut.status, cut.response_flags, cut.input_tokens, cut.events) == (0, "DC,UR",
                                                                              None, 3)
    assert from_record("200\t-\t74") is None  # not one of ours
    assert from_record("200\t-\t1\t1\t-\t-\t-\t-\tu1") is None  # no tenant


def test_metering_records_are_settled_and_odd_ones_skipped():
    settled: list[CompletedRequest] = []
    servicer = MeterLogServicer(settled.append)
    # Built by field number, as Envoy's newer protocol and the types here name the
    # fields differently (meter_log.record_bodies).
    request = logs_service_pb2.ExportLogsServiceRequest()
    resource = request.resource_logs.add()
    scope = getattr(resource, _field_name(resource, 2)).add()
    records = getattr(scope, _field_name(scope, 2))
    records.add().body.string_value = "200\t-\t1\t2\t3\t4\t-\tacme\tu1"
    records.add().body.string_value = "garbage"
    assert asyncio.run(servicer.export(request, None)) == b""  # type: ignore[arg-type]
    assert [(d.client_id, d.user, d.input_tokens) for d in settled] == [("acme", "u1", 3)]
    assert (servicer.records, servicer.skipped) == (1, 1)
