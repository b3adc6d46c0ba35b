"""`authz serve`, unchanged, with transport knobs the service does not expose (experiments).

The service's code is not touched: this launcher adjusts, in its own process only,
the gRPC server options ``authz.service`` passes to ``grpc.aio.server`` and, with
``--unix``, adds a Unix-socket listener beside the TCP one (the TCP one still answers
the readiness probe). Then it runs ``authz serve`` as the CLI would, settings from the
environment.

    python -m bench.authz_variant [--reuseport] [--unix PATH] [--option NAME=INT ...]
"""

from __future__ import annotations

import argparse
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.authz_variant", description=__doc__)
    parser.add_argument("--reuseport", action="store_true", help="grpc.so_reuseport=1")
    parser.add_argument("--unix", help="also listen on unix:PATH")
    parser.add_argument("--option", action="append", default=[], help="NAME=INT server option")
    args = parser.parse_args(argv)

    import grpc

    import authz.service as server_module
    from authz.cli import main as cli

    options = dict(server_module._GRPC_OPTIONS)
    if args.reuseport:
        options["grpc.so_reuseport"] = 1
    for item in args.option:
        name, _, value = item.partition("=")
        options[name] = int(value)
    server_module._GRPC_OPTIONS = list(options.items())

    if args.unix:
        original = grpc.aio.server
        unix_path: str = args.unix

        def server_with_unix(*a: Any, **kw: Any) -> Any:
            server = original(*a, **kw)
            if not server.add_insecure_port(f"unix:{unix_path}"):
                raise OSError(f"cannot listen on unix:{unix_path}")
            return server

        grpc.aio.server = server_with_unix

    return cli.main(["serve"])


if __name__ == "__main__":
    raise SystemExit(main())
