"""examples/browser works as its README says: the page signs in against the Auth Emulator,
gets a tenant, and streams a chat completion through the relay into the page."""

from __future__ import annotations

import json
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import BROWSER_MARKS, EXAMPLE_DIR
from tests.support.authz_cli import authz_json
from tests.support.browser import JS_PACKAGES

pytestmark = BROWSER_MARKS
GREETING = "Hello from the fake upstream"


def test_example_pins_the_firebase_version_the_suite_serves():
    pinned = json.loads((EXAMPLE_DIR / "package.json").read_text())["dependencies"]
    assert pinned["firebase"] == JS_PACKAGES["firebase"]
    assert f"/firebasejs/{pinned['firebase']}/firebase-app.js" in (
        EXAMPLE_DIR / "index.html").read_text()


def test_example_signs_in_and_streams_a_chat_completion(driver, page_servers, browser_relay,
                                                        emulator, firebase, upstream,
                                                        node_modules: Path):
    driver.get(f"{page_servers[0].origin}/example/index.html")
    wait = WebDriverWait(driver, 30, poll_frequency=0.05)

    def status() -> str:
        return str(driver.find_element(By.ID, "status").text)

    def fill(field: str, value: str) -> None:
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)

    wait.until(lambda _: status() == "ready")
    fill("relay", browser_relay.url)
    fill("emulator", f"http://{emulator.host}")
    fill("project", firebase.project_id)
    fill("email", "example-user@example.com")
    driver.find_element(By.ID, "sign-in").click()
    wait.until(lambda _: status().startswith(("signed in as", "failed")))
    assert status().startswith("signed in as"), status()
    uid = status().split()[3]

    # No tenant yet: the relay's JSON error is shown.
    driver.find_element(By.ID, "ask").click()
    wait.until(lambda _: status().startswith(("error", "failed", "done")))
    assert status() == 'error 500: {"error": "Client ID not found"}', status()

    authz_json("users", "assign", uid, "acme", env={
        "FIREBASE_AUTH_EMULATOR_HOST": emulator.host,
        "AUTHZ_FIREBASE_PROJECT_ID": firebase.project_id})
    driver.find_element(By.ID, "sign-in").click()  # again: the new token has the claim
    wait.until(lambda _: status().startswith(("signed in as", "failed")))
    upstream.clear()
    driver.find_element(By.ID, "ask").click()
    wait.until(lambda _: status() in ("done",) or status().startswith(("error", "failed")))
    assert status() == "done"
    assert driver.find_element(By.ID, "answer").text == GREETING
    [received] = upstream.requests
    assert received.path == "/v1/chat/completions"
