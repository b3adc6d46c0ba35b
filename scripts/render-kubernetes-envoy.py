#!/usr/bin/env python3
"""Render the Kubernetes Envoy configuration from THE template, envoy/envoy.yaml.

    .venv/bin/python scripts/render-kubernetes-envoy.py            # rewrite the base's copy
    .venv/bin/python scripts/render-kubernetes-envoy.py --check    # exit 1 if it is stale
    .venv/bin/python scripts/render-kubernetes-envoy.py --upstream-url https://gw.example \
        --output deploy/kubernetes/overlays/mine/envoy.yaml          # an overlay's own

deploy/kubernetes/base/envoy.yaml is generated, never edited: the kustomize base turns it
into the ConfigMap Envoy reads, and the test suite fails when it no longer matches what
this script renders from the template (tests/unit/test_kubernetes_manifests.py).
The pod's addresses: Envoy listens on every interface, port 8080; its admin endpoint and
the authz sidecar stay on 127.0.0.1 (9901, 9001), shared by the pod's containers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from authz.errors import ConfigError  # noqa: E402
from authz.stack.cors import parse_origins  # noqa: E402
from authz.stack.envoy_config import EnvoyParams, render  # noqa: E402

BASE_OUTPUT = REPO / "deploy/kubernetes/base/envoy.yaml"
HEADER = (
    "# GENERATED from envoy/envoy.yaml by scripts/render-kubernetes-envoy.py; do not edit.\n"
    "# Regenerate: .venv/bin/python scripts/render-kubernetes-envoy.py\n"
)
# The official Envoy image's CA bundle (Ubuntu's ca-certificates).
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


def kubernetes_params(upstream_url: str = "https://api.openai.com",
                      check_timeout_s: float = 2.0,
                      stream_idle_timeout_s: float = 300.0,
                      cors_origins: str = "") -> EnvoyParams:
    return EnvoyParams(
        listen_host="0.0.0.0", listen_port=8080,
        admin_host="127.0.0.1", admin_port=9901,
        authz_host="127.0.0.1", authz_port=9001,
        upstream_url=upstream_url, upstream_ca_file=SYSTEM_CA_FILE,
        check_timeout_s=check_timeout_s, stream_idle_timeout_s=stream_idle_timeout_s,
        cors_origins=parse_origins(cors_origins),
    )


def rendered(params: EnvoyParams) -> str:
    return HEADER + render(params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=BASE_OUTPUT)
    parser.add_argument("--upstream-url", default="https://api.openai.com")
    parser.add_argument("--check-timeout", type=float, default=2.0, help="seconds")
    parser.add_argument("--stream-idle-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--cors-origins", default="", help=(
        "browser origins allowed to call the relay, comma-separated (AUTHZ_CORS_ORIGINS)"))
    parser.add_argument("--check", action="store_true",
                        help="do not write: exit 1 if the output file differs")
    args = parser.parse_args(argv)
    try:
        text = rendered(kubernetes_params(args.upstream_url, args.check_timeout,
                                          args.stream_idle_timeout, args.cors_origins))
    except (ConfigError, ValueError) as exc:
        print(f"render-kubernetes-envoy: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run scripts/render-kubernetes-envoy.py",
                  file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
