"""The real Firebase Auth Emulator (npm firebase-tools), for the tests.

:func:`ensure_firebase_tools` installs the pinned firebase-tools into the git-ignored
``.work/node/`` of this checkout when it is not there yet (about 100-160 s, once), and
raises with npm's output when it cannot: CI runs the emulator tests, so a missing tool is
a failure, never a skip. :class:`AuthEmulator` runs ``firebase emulators:start --only
auth`` on free loopback ports (the auth port, the hub and the logging port), waits until
it answers, and talks to it the way a browser app and an admin would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Self

import httpx2 as httpx

from tests.support.processes import ManagedProcess, free_port, wait_for_http

FIREBASE_TOOLS_VERSION = "15.34.2"
ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / ".work" / "node"
FIREBASE_BIN = NODE_DIR / "node_modules" / ".bin" / "firebase"
INSTALL_TIMEOUT_S = 900


class FirebaseToolsUnavailable(RuntimeError):
    pass


def _installed_version() -> str | None:
    package = NODE_DIR / "node_modules" / "firebase-tools" / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_firebase_tools() -> Path:
    """The firebase CLI, installed into .work/node/ if missing (pinned version)."""
    if FIREBASE_BIN.exists() and _installed_version() == FIREBASE_TOOLS_VERSION:
        return FIREBASE_BIN
    npm = shutil.which("npm")
    if npm is None:
        raise FirebaseToolsUnavailable(
            "npm is not installed: the Firebase Auth Emulator tests need Node.js and npm "
            "(apt-get install nodejs npm) to install firebase-tools")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
             "--loglevel=error", f"firebase-tools@{FIREBASE_TOOLS_VERSION}"],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise FirebaseToolsUnavailable(
            f"npm install firebase-tools@{FIREBASE_TOOLS_VERSION} did not finish in "
            f"{INSTALL_TIMEOUT_S}s") from exc
    if result.returncode != 0 or not FIREBASE_BIN.exists():
        raise FirebaseToolsUnavailable(
            f"npm install firebase-tools@{FIREBASE_TOOLS_VERSION} into {NODE_DIR} failed "
            f"(exit {result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    return FIREBASE_BIN


class AuthEmulator:
    def __init__(self, project_id: str, work_dir: Path) -> None:
        self.project_id = project_id
        self.work_dir = work_dir
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        """What FIREBASE_AUTH_EMULATOR_HOST must say."""
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.host}/identitytoolkit.googleapis.com/v1"

    def start(self, timeout: float = 90) -> Self:
        firebase = ensure_firebase_tools()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "firebase.json").write_text(json.dumps({"emulators": {
            "auth": {"host": "127.0.0.1", "port": self.port},
            "hub": {"host": "127.0.0.1", "port": free_port()},
            "logging": {"host": "127.0.0.1", "port": free_port()},
            "ui": {"enabled": False},
        }}))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.work_dir),
            "XDG_CONFIG_HOME": str(self.work_dir / ".config"),
            "NO_UPDATE_NOTIFIER": "1",
            "CI": "true",
        }
        self.process = ManagedProcess(
            [str(firebase), "emulators:start", "--only", "auth", "--project", self.project_id],
            env, self.work_dir / "emulator.log", cwd=self.work_dir, inherit_env=False,
            name="firebase-auth-emulator",
        ).start()
        wait_for_http(f"http://{self.host}/", timeout=timeout, process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15)

    # -- what an app does --------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any], admin: bool = False) -> dict[str, Any]:
        headers = {"authorization": "Bearer owner"} if admin else {}
        response = httpx.post(f"{self.base}/{path}", json=body, headers=headers, timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def sign_up(self, email: str, password: str) -> dict[str, Any]:
        return self._post("accounts:signUp?key=any", {
            "email": email, "password": password, "returnSecureToken": True})

    def sign_in(self, email: str, password: str) -> str:
        reply = self._post("accounts:signInWithPassword?key=any", {
            "email": email, "password": password, "returnSecureToken": True})
        return str(reply["idToken"])

    # -- what an admin does --------------------------------------------------------------

    def set_disabled(self, uid: str, disabled: bool) -> None:
        self._post(f"projects/{self.project_id}/accounts:update",
                   {"localId": uid, "disableUser": disabled}, admin=True)
