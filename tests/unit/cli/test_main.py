"""The `authz` command line as a newcomer reads it: --version, `up --help`."""

import pytest

from authz.cli.main import build_parser


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("authz ")


def test_up_help_shows_defaults_and_environment(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--help"])
    text = capsys.readouterr().out
    assert "(default: 127.0.0.1:8080)" in text
    assert "--logs DIR" in text
    assert "--demo" in text
    for name in ("VAULT_ADDR", "AUTHZ_FIREBASE_PROJECT_ID", "AUTHZ_METRICS_ADDR",
                 "OPENAI_API_KEY"):
        assert name in text
