"""The floor: the least a Python ext_authz can do per check.

grpc.aio, Envoy's CheckRequest parsed with protobuf's upb runtime (xds-protos), one
dict lookup of the Authorization header, and a pre-serialized CheckResponse that
allows the request and sets one header (the tenant's key). Unknown tokens get a
pre-serialized 401. No verification, no Vault, no metrics, no logging: whatever the
real service costs above this is the price of being correct.

    python -m bench.floor --port N --tokens MAP.json   # {"<token>": "<api key>"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "envoy.service.auth.v3.Authorization"


def allow_bytes(api_key: str) -> bytes:
    response = external_auth_pb2.CheckResponse()
    response.status.code = 0
    option = response.ok_response.headers.add()
    option.header.key = "authorization"
    option.header.value = f"Bearer {api_key}"
    option.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return bytes(response.SerializeToString())


def deny_bytes() -> bytes:
    response = external_auth_pb2.CheckResponse()
    response.status.code = 16  # UNAUTHENTICATED
    response.denied_response.status.code = 401
    response.denied_response.body = '{"error": "Authentication failed"}'
    return bytes(response.SerializeToString())


async def serve(host: str, port: int, table: dict[str, bytes]) -> None:
    deny = deny_bytes()

    async def check(request: Any, context: Any) -> bytes:
        return table.get(request.attributes.request.http.headers.get("authorization", ""), deny)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=external_auth_pb2.CheckRequest.FromString,
                response_serializer=lambda payload: payload,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    # The template health-checks the authz cluster over gRPC: answer like authz does.
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"floor listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", required=True, help="JSON map token -> api key")
    args = parser.parse_args(argv)
    with open(args.tokens, encoding="utf-8") as f:
        mapping: dict[str, str] = json.load(f)
    table = {f"Bearer {token}": allow_bytes(key) for token, key in mapping.items()}
    asyncio.run(serve(args.host, args.port, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
