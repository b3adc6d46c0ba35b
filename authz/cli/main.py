"""The `authz` command: serve, up, tenant, envoy-config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from importlib import metadata

from authz.cli import cache as cache_cli
from authz.cli import fastpath as fastpath_cli
from authz.cli import keys as keys_cli
from authz.cli import tenant as tenant_cli
from authz.cli import usage as usage_cli
from authz.cli import users as users_cli
from authz.cli.common import use_json_errors
from authz.errors import ConfigError
from authz.settings import Settings, parse_addr


def _serve(args: argparse.Namespace) -> int:
    from authz.service import serve

    try:
        overrides: dict[str, object] = {}
        if args.grpc_addr:
            overrides["grpc_addr"] = parse_addr("--grpc-addr", args.grpc_addr)
        settings = Settings.from_env(overrides=overrides)
    except ConfigError as exc:
        print(f"authz serve: {exc}", file=sys.stderr)
        return 2
    for warning in settings.warnings():
        print(f"authz serve: warning: {warning}", file=sys.stderr)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:  # an address in use: one line, no traceback
        print(f"authz serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _up(args: argparse.Namespace) -> int:
    from authz.stack.up import run_up

    return run_up(args.listen, {}, demo=args.demo, logs_dir=args.logs)


def _version() -> str:
    try:
        return metadata.version("openai-relay")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


_UP_ENVIRONMENT = """environment (flags win over it; the full table is docs/configuration.md):
  VAULT_ADDR, VAULT_TOKEN     an existing Vault; unset: an in-memory OpenBao dev server
  AUTHZ_FIREBASE_PROJECT_ID   Firebase project whose ID tokens are accepted
  AUTHZ_OIDC_ISSUERS          OIDC issuers (JSON); AUTHZ_CLIENT_KEYS=on|off|auto
  AUTHZ_UPSTREAM_URL          where requests go (default https://api.openai.com)
  AUTHZ_GRPC_ADDR             authz gRPC address (default: a free loopback port)
  AUTHZ_METRICS_ADDR          authz /metrics and /admin (default: a free loopback port)
  OPENAI_API_KEY              with --demo: the demo tenant's key
"""


def _envoy_config(args: argparse.Namespace) -> int:
    from authz.stack.envoy_config import EnvoyParams, render

    try:
        settings = Settings.from_env()
        listen = parse_addr("--listen", args.listen)
        admin = parse_addr("--admin", args.admin)
        authz = parse_addr("--authz", args.authz) if args.authz else settings.grpc_addr
        text = render(EnvoyParams(
            listen_host=listen[0], listen_port=listen[1],
            admin_host=admin[0], admin_port=admin[1],
            authz_host=authz[0], authz_port=authz[1],
            health_port=args.health_port,
            upstream_url=settings.upstream_url, upstream_ca_file=settings.upstream_ca_file,
            check_timeout_s=settings.check_timeout_s,
            stream_idle_timeout_s=settings.stream_idle_timeout_s,
            cors_origins=settings.cors_origins,
            fast_path=settings.fast_path,
        ))
    except (ConfigError, ValueError) as exc:
        print(f"authz envoy-config: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz", description=(
        "openai-relay: an authenticating OpenAI relay (Envoy + ext_authz + Vault)."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "up", help="run the whole stack locally, in the foreground",
        description="Run Envoy, the authz service and (when VAULT_ADDR is unset) an OpenBao "
                    "dev server on loopback, in the foreground; Ctrl-C stops everything.",
        epilog=_UP_ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--listen", default="127.0.0.1:8080",
                    help="HOST:PORT for the relay (default: %(default)s)")
    up.add_argument("--demo", action="store_true", help=(
        "create tenant 'demo' from $OPENAI_API_KEY, issue it a client key and print a "
        "ready-to-paste curl line and openai-SDK snippet; switches AUTHZ_CLIENT_KEYS=on "
        "when no Firebase project or OIDC issuer is set"))
    up.add_argument("--logs", metavar="DIR", help=(
        "keep the logs (and Envoy's config) in DIR; default: a temporary folder removed "
        "on exit"))
    up.set_defaults(handler=_up)

    serve = commands.add_parser("serve", help="run the ext_authz gRPC service alone")
    serve.add_argument("--grpc-addr", help="HOST:PORT to listen on (AUTHZ_GRPC_ADDR)")
    serve.set_defaults(handler=_serve)

    envoy = commands.add_parser("envoy-config", help="print the rendered Envoy configuration")
    envoy.add_argument("--listen", default="0.0.0.0:8080", help="HOST:PORT Envoy listens on")
    envoy.add_argument("--admin", default="127.0.0.1:9901", help="HOST:PORT of Envoy's admin")
    envoy.add_argument("--authz", help="HOST:PORT of the authz service (AUTHZ_GRPC_ADDR)")
    envoy.add_argument("--health-port", type=int, default=8081, help=(
        "port of the readiness listener (/ready), on the --listen host"))
    envoy.set_defaults(handler=_envoy_config)

    tenant_cli.add_parser(commands)
    keys_cli.add_parser(commands)
    users_cli.add_parser(commands)
    cache_cli.add_parser(commands)
    fastpath_cli.add_parser(commands)
    usage_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_json_errors(bool(getattr(args, "json", False)))
    return int(args.handler(args))
