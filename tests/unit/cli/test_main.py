"""The `authz` command line as a newcomer reads it: --version, `up --help`."""

import json

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


@pytest.mark.parametrize("argv", [
    ["tenant", "show", "not a tenant!"],
    ["keys", "list", "not a tenant!"],
    ["usage", "show", "not a tenant!", "--admin", "127.0.0.1:1"],
    ["cache", "invalidate", "not a tenant!", "--admin", "127.0.0.1:1"],
])
def test_errors_are_json_under_json_and_text_without(capsys, argv):
    from authz.cli.main import main

    code = main([*argv, "--json"])
    err = capsys.readouterr().err
    error = json.loads(err)
    assert error["exit_code"] == code == 2
    assert error["command"] == f"authz {argv[0]}"
    assert "client" in error["error"].lower() or "invalid" in error["error"].lower()

    assert main(argv) == 2
    text = capsys.readouterr().err
    assert text.startswith(f"authz {argv[0]}: ")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
