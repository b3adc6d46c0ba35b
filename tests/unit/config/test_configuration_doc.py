"""docs/configuration.md against the settings model: every environment variable
Settings.from_env reads is in the table, and every variable in the table is read."""

import re
from pathlib import Path

from authz.settings import Settings

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


class RecordingEnv(dict[str, str]):
    """An empty environment that remembers every name asked for."""

    def __init__(self, base: dict[str, str]) -> None:
        super().__init__(base)
        self.asked: set[str] = set()

    def get(self, key, default=None):  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def documented() -> set[str]:
    names = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def test_every_setting_parsed_is_documented_and_every_documented_one_is_parsed():
    env = RecordingEnv({"AUTHZ_FIREBASE_PROJECT_ID": "demo-relay"})
    Settings.from_env(env)
    assert len(env.asked) > 30
    assert env.asked - documented() == set(), "parsed but not in docs/configuration.md"
    assert documented() - env.asked == set(), "in docs/configuration.md but not parsed"
