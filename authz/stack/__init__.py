"""What `authz up` runs: the Envoy template and its renderer, the pip-installed binaries,
process supervision, and the `--demo` set-up."""
