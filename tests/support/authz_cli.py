"""Run the `authz` command as an operator would: a real process, its exit code, its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any


def authz(*args: str, env: Mapping[str, str] | None = None, stdin: str | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authz", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, input=stdin,
                          timeout=timeout, check=False)


def authz_json(*args: str, env: Mapping[str, str] | None = None) -> Any:
    result = authz(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def seconds_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05
                  ) -> float:
    """Poll condition until true; the seconds it took (TimeoutError past timeout)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"condition still false after {timeout}s")
        time.sleep(interval)  # polling interval
    return time.monotonic() - started
