"""The command line: `authz serve|up|tenant|keys|users|usage|cache|envoy-config`.

Each subcommand group lives in its own module; `main` parses and dispatches.
"""
