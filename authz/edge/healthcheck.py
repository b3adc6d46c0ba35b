"""`python -m authz.edge.healthcheck`: exit 0 when `authz serve` answers SERVING on gRPC health.

The container health check (Dockerfile HEALTHCHECK, Kubernetes exec probes). The
service listens on loopback only, as it must: anything that can call Check would get
tenant keys back in its header mutations. So the kubelet's own gRPC probe, which dials
the pod IP, cannot reach it; this command runs inside the pod and dials 127.0.0.1.

    python -m authz.edge.healthcheck [--addr HOST:PORT] [--service NAME] [--timeout SECONDS]

The address defaults to AUTHZ_GRPC_ADDR (127.0.0.1:9001). Kept light: it imports grpc
and the health stubs only, so a probe costs little CPU.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.config.env import DEFAULT_GRPC_ADDR, format_addr, parse_addr, process_environment
from authz.errors import ConfigError


def check(addr: str, service: str = "", timeout_s: float = 2.0) -> tuple[bool, str]:
    """(serving, what was seen) for the gRPC health service at addr."""
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return False, f"no answer from {addr}: {code.name if code else exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz.edge.healthcheck")
    parser.add_argument("--addr", help="HOST:PORT (default: AUTHZ_GRPC_ADDR, or 127.0.0.1:9001)")
    parser.add_argument("--service", default="", help="health service name ('' = server)")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if not args.addr:
        # AUTHZ_GRPC_ADDR as the settings model reads it (same parser and default), through
        # its light half: a probe must not load the whole service.
        raw = process_environment().get("AUTHZ_GRPC_ADDR", "").strip() or DEFAULT_GRPC_ADDR
        try:
            args.addr = format_addr(parse_addr("AUTHZ_GRPC_ADDR", raw))
        except ConfigError as exc:
            print(f"authz healthcheck: {exc}", file=sys.stderr)
            return 2
    serving, seen = check(args.addr, args.service, args.timeout)
    print(f"authz {args.addr}: {seen}", file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
