"""The browser suite's parts: a real headless Chromium (Debian's, via chromium-driver), a
page served from one loopback origin (and the same page from an unlisted one), the real
Firebase Auth Emulator, and the whole relay on another origin with AUTHZ_CORS_ORIGINS
naming the page's origin. Each is started once for this package (and stopped when its
last test is done, not at the end of the whole run) and waited on for readiness.

Missing pieces are installed by the set-up (chromium with scripts/install-browser.sh as
root, the npm packages into .work/); when that is impossible the suite fails, never skips.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlencode

import pytest

from tests.integration.conftest import TENANTS, relay_env
from tests.support.authz_cli import authz_json
from tests.support.browser import (
    BrowserUnavailable,
    StaticServer,
    ensure_chromium,
    ensure_js_packages,
    start_chromium,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.firebase import FirebaseKeys
from tests.support.firebase_emulator import AuthEmulator, FirebaseToolsUnavailable
from tests.support.relay import RelayStack
from tests.support.tls import TestPKI
from tests.support.vault import BaoDevServer

PAGE_DIR = Path(__file__).resolve().parent / "page"
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "browser"
PAGE_READY_TIMEOUT_S = 30
# What every test module here is marked with. The first run installs chromium (apt) and
# npm packages: minutes, once.
BROWSER_MARKS = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(1200)]


def _fail(what: str, exc: Exception) -> NoReturn:
    pytest.fail(f"the browser suite needs {what} and it could not be set up: {exc}",
                pytrace=False)


@pytest.fixture(scope="package")
def node_modules() -> Path:
    try:
        return ensure_js_packages()
    except BrowserUnavailable as exc:
        _fail("its npm packages", exc)


def import_map(node_modules: Path) -> dict[str, dict[str, str]]:
    """Bare specifiers to the packages' browser ESM files, served from loopback.

    firebase's CDN-shaped builds (firebase-auth.js &c.) import firebase-app.js by its
    absolute CDN URL; mapping that exact URL to the local copy keeps the page offline."""
    auth = (node_modules / "firebase" / "firebase-auth.js").read_text()
    cdn_app = re.search(r'from\s*"(https://[^"]+/firebase-app\.js)"', auth)
    assert cdn_app, "firebase-auth.js no longer imports firebase-app.js by URL"
    return {"imports": {
        "firebase/app": "/js/firebase/firebase-app.js",
        "firebase/auth": "/js/firebase/firebase-auth.js",
        cdn_app.group(1): "/js/firebase/firebase-app.js",
        "openai": "/js/openai/index.mjs",
    }}


@pytest.fixture(scope="package")
def page_servers(node_modules: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[StaticServer, StaticServer]]:
    """The page on a listed origin, and the very same page on an unlisted one."""
    site = tmp_path_factory.mktemp("page")
    html = (PAGE_DIR / "index.html").read_text()
    (site / "index.html").write_text(
        html.replace("{{IMPORT_MAP}}", json.dumps(import_map(node_modules), indent=1)))
    shutil.copy(PAGE_DIR / "page.js", site / "page.js")
    mounts = {"/js/firebase/": node_modules / "firebase", "/js/openai/": node_modules / "openai",
              # examples/browser, as its README serves it (its own npm install).
              "/example/node_modules/": node_modules, "/example/": EXAMPLE_DIR,
              "/": site}
    listed, unlisted = StaticServer(mounts).start(), StaticServer(mounts).start()
    try:
        yield listed, unlisted
    finally:
        listed.stop()
        unlisted.stop()


@pytest.fixture(scope="package")
def emulator(firebase: FirebaseKeys, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[AuthEmulator]:
    server = AuthEmulator(firebase.project_id, tmp_path_factory.mktemp("auth-emulator"))
    try:
        server.start()
    except FirebaseToolsUnavailable as exc:
        _fail("the Firebase Auth Emulator", exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def browser_relay(pki: TestPKI, firebase: FirebaseKeys, vault: BaoDevServer,
                  fake_openai: FakeOpenAI, emulator: AuthEmulator,
                  page_servers: tuple[StaticServer, StaticServer],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayStack]:
    """The relay accepting the emulator's tokens, CORS open to the listed page only."""
    for tenant in TENANTS:
        vault.put_tenant(tenant.client_id, tenant.api_key, organization=tenant.organization,
                         project=tenant.project)
    env = {**relay_env(pki, firebase, vault, fake_openai),
           "FIREBASE_AUTH_EMULATOR_HOST": emulator.host,
           "AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS": "true",
           "AUTHZ_CORS_ORIGINS": page_servers[0].origin}
    stack = RelayStack(env, tmp_path_factory.mktemp("browser-relay"))
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture(scope="package")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        ensure_chromium()
    except BrowserUnavailable as exc:
        _fail("Chromium", exc)
    browser = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.quit()


@dataclass
class Page:
    """The test page open in the browser, and a way to call its functions."""

    driver: Any

    def call(self, name: str, *args: object) -> Any:
        """Await window.relayTest[name](...args) in the page; its result, or raise."""
        outcome = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.relayTest[arguments[0]](...arguments[1]).then("
            "  (value) => done({value}),"
            "  (error) => done({error: String(error && error.stack || error)}));",
            name, list(args))
        if "error" in outcome:
            raise AssertionError(f"{name} failed in the page: {outcome['error']}")
        return outcome.get("value")


@pytest.fixture(scope="package")
def open_page(driver: Any, browser_relay: RelayStack, emulator: AuthEmulator,
              firebase: FirebaseKeys) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    def open_at(origin: str) -> Page:
        query = urlencode({"relay": browser_relay.url, "emulator": f"http://{emulator.host}",
                           "project": firebase.project_id})
        driver.get(f"{origin}/index.html?{query}")
        try:
            WebDriverWait(driver, PAGE_READY_TIMEOUT_S, poll_frequency=0.05).until(
                lambda d: d.execute_script("return window.pageReady === true"
                                           " || window.pageErrors.length > 0"))
        finally:
            errors = driver.execute_script("return window.pageErrors")
        assert not errors, f"the page failed to load: {errors}"
        return Page(driver)

    return open_at


@pytest.fixture
def listed_page(open_page: Any, page_servers: tuple[StaticServer, StaticServer]) -> Page:
    """The page freshly loaded on the listed origin (a test may have moved elsewhere)."""
    page: Page = open_page(page_servers[0].origin)
    return page


@pytest.fixture(scope="package")
def signed_in(open_page: Any, page_servers: tuple[StaticServer, StaticServer],
              emulator: AuthEmulator, firebase: FirebaseKeys) -> str:
    """A user signed up and in with the Firebase JS SDK in the page, given tenant acme with
    `authz users assign` (firebase-admin); the ID token the page got after that."""
    email, password = "page-user@example.com", "correct-horse-battery"
    listed_page: Page = open_page(page_servers[0].origin)
    user = listed_page.call("signUp", email, password)
    assigned = authz_json("users", "assign", user["uid"], "acme", env={
        "FIREBASE_AUTH_EMULATOR_HOST": emulator.host,
        "AUTHZ_FIREBASE_PROJECT_ID": firebase.project_id})
    assert assigned["client_id"] == "acme"
    token: str = listed_page.call("signIn", email, password)
    return token
