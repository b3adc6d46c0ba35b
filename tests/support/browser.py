"""A real browser for the tests: Debian's Chromium, headless, driven by Selenium through
chromium-driver, and the JavaScript packages its pages load, all on loopback.

- :func:`ensure_chromium` installs ``chromium`` and ``chromium-driver`` with
  ``scripts/install-browser.sh`` (apt, as root) when they are missing; CI runs the suite,
  so a browser that cannot be installed is a failure, never a skip.
- :func:`ensure_js_packages` installs the pinned npm packages a page imports (the
  Firebase JS SDK and the openai JS SDK) into the git-ignored ``.work/browser-js/``.
  Nothing is bundled and nothing loads from the internet: :class:`StaticServer` serves
  the packages' own browser ESM files from there.
- :func:`start_chromium` starts a fresh headless profile whose host resolver knows only
  127.0.0.1, so a page that tried to reach anything else would fail instead of leaking.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / ".work" / "browser-js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_SCRIPT = ROOT / "scripts" / "install-browser.sh"
# Pinned: the page's import map names these packages' files by path.
JS_PACKAGES = {"firebase": "13.2.0", "openai": "7.55.0"}
INSTALL_TIMEOUT_S = 900
# Flags for a quiet, offline, throwaway browser: no background requests of its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Every name resolves to nothing except 127.0.0.1 itself: all traffic stays local.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


class BrowserUnavailable(RuntimeError):
    pass


def ensure_chromium() -> None:
    """Chromium and chromium-driver, installed with apt (as root) when missing."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0:
        raise BrowserUnavailable(
            f"{CHROMIUM} or {CHROMEDRIVER} is missing: run `sudo {INSTALL_SCRIPT}` "
            "(Debian's chromium and chromium-driver)")
    result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True,
                            timeout=INSTALL_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise BrowserUnavailable(f"{INSTALL_SCRIPT} failed (exit {result.returncode}):\n"
                                 f"{(result.stdout + result.stderr)[-3000:]}")


def _installed(name: str) -> str | None:
    try:
        package = JS_DIR / "node_modules" / name / "package.json"
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_js_packages() -> Path:
    """The node_modules folder holding the pinned JS packages (npm install when missing)."""
    if all(_installed(name) == version for name, version in JS_PACKAGES.items()):
        return JS_DIR / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise BrowserUnavailable("npm is not installed: the browser suite needs it "
                                 "(apt-get install nodejs npm) to install its JS packages")
    JS_DIR.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in JS_PACKAGES.items()]
    try:
        result = subprocess.run(
            [npm, "install", "--prefix", str(JS_DIR), "--no-audit", "--no-fund",
             "--loglevel=error", *specs],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BrowserUnavailable(f"npm install {' '.join(specs)} did not finish in "
                                 f"{INSTALL_TIMEOUT_S}s") from exc
    missing = [n for n, v in JS_PACKAGES.items() if _installed(n) != v]
    if result.returncode != 0 or missing:
        raise BrowserUnavailable(
            f"npm install {' '.join(specs)} into {JS_DIR} failed (exit {result.returncode}, "
            f"missing {missing}):\n{(result.stdout + result.stderr)[-3000:]}")
    return JS_DIR / "node_modules"


# --------------------------------------------------------------------------- pages


class _Handler(SimpleHTTPRequestHandler):
    """Files under a few URL prefixes, each a folder; nothing else, no listings."""

    mounts: ClassVar[Mapping[str, Path]] = {}
    extensions_map: ClassVar[dict[str, str]] = {  # type: ignore[misc]
        **SimpleHTTPRequestHandler.extensions_map,
        # Module scripts must come as JavaScript, or the browser refuses them.
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".map": "application/json",
    }

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, folder in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
            if clean.startswith(prefix):
                target = (folder / clean[len(prefix):].lstrip("/")).resolve()
                if target.is_relative_to(folder.resolve()) and target.is_file():
                    return str(target)
        return str(Path(tempfile.gettempdir()) / "no-such-file-here")

    def end_headers(self) -> None:
        self.send_header("cache-control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read what the page reports, not the access log


class StaticServer:
    """Serves `mounts` (URL prefix → folder) on 127.0.0.1 at a free port, in a thread."""

    def __init__(self, mounts: Mapping[str, Path]) -> None:
        handler = type("MountedHandler", (_Handler,), {"mounts": dict(mounts)})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="static-server",
                                       daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def start_chromium(user_data_dir: Path) -> Any:
    """A headless Chromium with a fresh profile, as a Selenium WebDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    # The page's console, for failure messages.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(60)
    return driver
