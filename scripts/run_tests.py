"""The full test run behind `./run.sh test` (no arguments): every suite, with the
ten-minute stream test, which spends its time waiting, in a second pytest process
beside the rest, so it adds nothing to the wall time; then the integration suites
again with the fast path on (RELAY_TEST_FAST_PATH=on, docs/fast-path.md), so that both
modes are checked on every run (the soak tests, minutes of load each, once, as the
parity test, which runs a relay in each mode itself).

The last line is the sum of all runs: `total: N passed, N failed, N skipped`.
Exits non-zero if any run failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LONG = "tests/integration/test_long_stream.py"
# Starts a relay in each mode itself: once is enough.
BOTH_MODES = "tests/integration/test_fast_path_parity.py"
FAST_SUITES = "tests/integration"


def _counts(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a JUnit XML report; a missing report is one failure."""
    if not report.is_file():
        return 0, 1, 0
    root = ET.parse(report).getroot()  # noqa: S314 -- our own pytest wrote it, just now
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return tests - failed - skipped, failed, skipped


def main() -> int:
    results = REPO / ".work" / "test-results"
    results.mkdir(parents=True, exist_ok=True)
    for old in results.glob("*"):
        old.unlink()
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    long_log = (results / "long-stream.log").open("w")
    # Disjoint port ranges: the two runs start servers at the same time.
    long_run = subprocess.Popen(
        [*pytest, LONG, "-q", f"--junitxml={results / 'long.xml'}"],
        cwd=REPO, stdout=long_log, stderr=subprocess.STDOUT,
        env={**os.environ, "RELAY_TEST_PORTS": "30000-32000"},
    )
    try:
        main_rc = subprocess.call(
            [*pytest, "--ignore", LONG, f"--junitxml={results / 'main.xml'}"], cwd=REPO,
            env={**os.environ, "RELAY_TEST_PORTS": "15000-29999"})
        print(f"\n--- {FAST_SUITES} again, with the fast path on (soak tests once) ---",
              flush=True)
        fast_rc = subprocess.call(
            [*pytest, FAST_SUITES, "--ignore", LONG, "--ignore", BOTH_MODES,
             "-m", "not soak", "-q",
             f"--junitxml={results / 'fast-path.xml'}"], cwd=REPO,
            env={**os.environ, "RELAY_TEST_PORTS": "15000-29999",
                 "RELAY_TEST_FAST_PATH": "on"})
        long_rc = long_run.wait()
    finally:
        if long_run.poll() is None:
            long_run.terminate()
            long_run.wait(30)
        long_log.close()
    print(f"\n--- {LONG} (run beside the rest) ---")
    print((results / "long-stream.log").read_text(), end="")
    totals = [sum(c) for c in zip(*(_counts(results / name) for name in
                                     ("main.xml", "fast-path.xml", "long.xml")), strict=True)]
    print(f"total: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
    return 0 if main_rc == 0 and fast_rc == 0 and long_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
