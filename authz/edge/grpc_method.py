"""One gRPC method registered on the service's own port, with its reply pre-serialized.

Every method the authz service serves by hand (the ext_authz Check, the access log
stream, the metering log) encodes its own reply bytes (or sends an empty message), so
grpcio is given the identity as serializer and the request type's parser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


def _as_is(payload: bytes) -> bytes:
    return payload


def one_method_handler(service: str, method: str,
                       kind: Callable[..., grpc.RpcMethodHandler], behaviour: Any,
                       request_type: Any) -> grpc.GenericRpcHandler:
    """`kind`: grpc.unary_unary_rpc_method_handler, stream_unary_..., ...; `behaviour`
    returns (or its coroutine returns) the reply's bytes."""
    return grpc.method_handlers_generic_handler(
        service, {method: kind(behaviour, request_deserializer=request_type.FromString,
                               response_serializer=_as_is)})
