"""The containers suite: the images built from this repository (stand-in bases here, see
images.py), run by a Docker engine with host networking only, checked end to end with
the same tools as the integration suite: the fake OpenAI upstream over TLS and the
Firebase cert endpoint run in this process on 127.0.0.1, and the containers reach them
there, as they reach each other.

Needs an engine: `scripts/docker-engine.sh run -- ./run.sh test` (what CI runs) or, by
hand, `scripts/docker-engine.sh install && eval "$(scripts/docker-engine.sh start)" &&
scripts/docker-engine.sh base-image`. Without one the suite is skipped, unless
RELAY_CONTAINERS=required (set by `docker-engine.sh run`), when it fails instead.

Never a Docker network: every container is created with network_mode="host".
"""

from __future__ import annotations

import os

# The reaper image cannot be pulled here; containers are removed by the fixtures.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import contextlib
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import hvac
import pytest
from testcontainers.core.container import DockerContainer

from authz.edge.healthcheck import check as grpc_health
from authz.tenants.policy import relay_policy_hcl
from tests.containers.images import BuiltImages, build_all
from tests.support.fake_openai import FakeOpenAI
from tests.support.firebase import FirebaseKeys
from tests.support.processes import free_port
from tests.support.tenants import Tenant
from tests.support.tls import TestPKI

CONTAINER_CA = "/etc/relay-test/ca.pem"
READY_TIMEOUT_S = 60.0


TENANTS = (
    Tenant("acme", "sk-acme-containers-0123456789"),
    Tenant("globex", "sk-globex-containers-012345", organization="org-globex",
           project="proj-globex"),
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.containers)


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    required = os.environ.get("RELAY_CONTAINERS") == "required"
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        message = (f"no Docker engine ({type(exc).__name__}): start one with "
                   "scripts/docker-engine.sh (see tests/containers/conftest.py)")
        if required:
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> BuiltImages:
    built = build_all()
    print(f"\nimages built: {json.dumps({k: round(v, 1) for k, v in built.seconds.items()})}")
    return built


def host_container(image: str, **kwargs: Any) -> DockerContainer:
    """A container on the host's network (the only network allowed here), with an init."""
    assert "network" not in kwargs
    return DockerContainer(image, network_mode="host", init=True, **kwargs)


def container_state(container: DockerContainer) -> dict[str, Any]:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    state: dict[str, Any] = wrapped.attrs["State"]
    return state


def container_logs(container: DockerContainer) -> str:
    try:
        out, err = container.get_logs()
    except Exception as exc:  # the container may be gone already
        return f"(no logs: {exc})"
    return (out + err).decode(errors="replace")[-6000:]


def wait_until(ready: Callable[[], bool], container: DockerContainer, what: str,
               timeout: float = READY_TIMEOUT_S) -> None:
    """Poll `ready` until true; fail at once, with the logs, if the container exits."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        state = container_state(container)
        if state["Status"] in ("exited", "dead"):
            raise RuntimeError(f"{what}: container exited with {state['ExitCode']}:\n"
                               + container_logs(container))
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s:\n"
                               + container_logs(container))
        time.sleep(0.1)  # readiness poll interval


def http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as reply:
        return 200 <= reply.status < 300


def shared_dir(prefix: str) -> Path:
    """A directory that container users (authz uid 10001, envoy uid 101) can read."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- the stack


@dataclass
class ContainerStack:
    """OpenBao, authz and Envoy, each in its own container, on free loopback ports."""

    images: BuiltImages
    pki: TestPKI
    firebase: FirebaseKeys
    upstream: FakeOpenAI
    envoy_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    authz_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    vault_port: int = field(default_factory=free_port)
    vault_token: str = field(default_factory=lambda: "root-" + secrets.token_hex(8))
    workdir: Path = field(default_factory=lambda: shared_dir("relay-containers-"))
    containers: dict[str, DockerContainer] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/openai/v1"

    @property
    def vault_addr(self) -> str:
        return f"http://127.0.0.1:{self.vault_port}"

    def vault(self) -> hvac.Client:
        return hvac.Client(url=self.vault_addr, token=self.vault_token, timeout=5)

    def relay_env(self) -> dict[str, str]:
        assert self.firebase.server is not None
        return {
            "AUTHZ_FIREBASE_PROJECT_ID": self.firebase.project_id,
            "AUTHZ_FIREBASE_CERTS_URL": self.firebase.server.url,
            "AUTHZ_UPSTREAM_URL": self.upstream.url,
            "AUTHZ_UPSTREAM_CA_FILE": CONTAINER_CA,
            "AUTHZ_GRPC_ADDR": f"127.0.0.1:{self.authz_port}",
            "AUTHZ_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "AUTHZ_LOG_LEVEL": "DEBUG",
        }

    def authz_container(self, env: dict[str, str]) -> DockerContainer:
        """The authz image as Kubernetes runs it: read-only root, no capabilities."""
        container = host_container(
            self.images.authz, read_only=True, cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
        ).with_tmpfs_mount("/tmp").with_volume_mapping(str(self.pki.ca_file), CONTAINER_CA)
        for key, value in env.items():
            container.with_env(key, value)
        return container

    # -- start ---------------------------------------------------------------------

    def start(self) -> ContainerStack:
        self.start_vault()
        self.seed_vault()
        self.start_authz()
        self.start_envoy()
        return self

    def start_vault(self) -> None:
        vault = (host_container(self.images.openbao)
                 .with_env("BAO_DEV_ROOT_TOKEN_ID", self.vault_token)
                 .with_env("BAO_DEV_LISTEN_ADDRESS", f"127.0.0.1:{self.vault_port}")
                 .with_command(["server", "-dev", "-log-level=warn"]))
        self.containers["vault"] = vault.start()
        wait_until(lambda: http_ok(f"{self.vault_addr}/v1/sys/health"), vault, "openbao")

    def seed_vault(self) -> None:
        """Tenants, a read-only policy and an AppRole whose credentials authz logs in with."""
        root = self.vault()
        for tenant in TENANTS:
            secret = {"api_key": tenant.api_key}
            if tenant.organization:
                secret["organization"] = tenant.organization
            if tenant.project:
                secret["project"] = tenant.project
            root.secrets.kv.v2.create_or_update_secret(
                path=f"openai/clients/{tenant.client_id}", secret=secret, mount_point="secret")
        root.sys.create_or_update_policy(name="relay-reader", policy=relay_policy_hcl())
        root.sys.enable_auth_method("approle")
        root.write("auth/approle/role/relay", token_policies="relay-reader",
                   token_ttl="1h", token_max_ttl="4h")
        auth_dir = self.workdir / "vault-auth"
        auth_dir.mkdir(mode=0o755)
        role_id = root.read("auth/approle/role/relay/role-id")["data"]["role_id"]
        secret_id = root.write("auth/approle/role/relay/secret-id")["data"]["secret_id"]
        for name, value in (("role-id", role_id), ("secret-id", secret_id)):
            (auth_dir / name).write_text(value)
            (auth_dir / name).chmod(0o444)

    def start_authz(self) -> None:
        env = {
            **self.relay_env(),
            "VAULT_ADDR": self.vault_addr,
            "AUTHZ_VAULT_AUTH": "approle",
            "AUTHZ_VAULT_ROLE_ID_FILE": "/vault-auth/role-id",
            "AUTHZ_VAULT_SECRET_ID_FILE": "/vault-auth/secret-id",
        }
        authz = self.authz_container(env).with_volume_mapping(
            str(self.workdir / "vault-auth"), "/vault-auth")
        self.containers["authz"] = authz.start()
        wait_until(lambda: grpc_health(f"127.0.0.1:{self.authz_port}")[0], authz, "authz")

    def render_envoy_config(self, *, listen_port: int | None = None,
                            admin_port: int | None = None, authz_port: int | None = None,
                            health_port: int | None = None, name: str = "envoy") -> Path:
        """`authz envoy-config` run in the authz image (the same renderer as compose);
        returns the directory holding envoy.yaml."""
        client = docker.from_env()
        try:
            output = client.containers.run(
                self.images.authz,
                ["envoy-config", "--listen", f"127.0.0.1:{listen_port or self.envoy_port}",
                 "--admin", f"127.0.0.1:{admin_port or self.admin_port}",
                 "--health-port", str(health_port or self.health_port),
                 "--authz", f"127.0.0.1:{authz_port or self.authz_port}"],
                environment=self.relay_env(), network_mode="host", remove=True,
                stdout=True, stderr=False,
                volumes={str(self.pki.ca_file): {"bind": CONTAINER_CA, "mode": "ro"}},
            )
        finally:
            client.close()
        config_dir = self.workdir / name
        config_dir.mkdir(mode=0o755, exist_ok=True)
        path = config_dir / "envoy.yaml"
        path.write_bytes(output)
        path.chmod(0o644)
        return config_dir

    def envoy_container(self, config_dir: Path, admin_port: int | None = None
                        ) -> DockerContainer:
        return (host_container(self.images.envoy, read_only=True, cap_drop=["ALL"],
                               security_opt=["no-new-privileges:true"])
                .with_env("ENVOY_ADMIN_PORT", str(admin_port or self.admin_port))
                .with_volume_mapping(str(config_dir), "/etc/envoy")
                .with_volume_mapping(str(self.pki.ca_file), CONTAINER_CA)
                .with_command(["envoy", "-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart",
                               "--concurrency", "2", "--log-level", "warn"]))

    def start_envoy(self) -> None:
        envoy = self.envoy_container(self.render_envoy_config())
        self.containers["envoy"] = envoy.start()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.admin_port}/ready"), envoy, "envoy")

    def stop(self) -> None:
        for name in ("envoy", "authz", "vault"):
            container = self.containers.pop(name, None)
            if container is not None:
                with contextlib.suppress(Exception):
                    container.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> dict[str, str]:
        return {name: container_logs(c) for name, c in self.containers.items()}


@pytest.fixture(scope="session")
def stack(images: BuiltImages, pki: TestPKI, firebase: FirebaseKeys,
          fake_openai: FakeOpenAI) -> Iterator[ContainerStack]:
    stack = ContainerStack(images, pki, firebase, fake_openai)
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture
def token_for(firebase: FirebaseKeys) -> Callable[..., str]:
    def mint(client_id: str | None, uid: str = "user-1", **kwargs: object) -> str:
        return firebase.mint(None, uid, client_id, **kwargs)  # type: ignore[arg-type]

    return mint
