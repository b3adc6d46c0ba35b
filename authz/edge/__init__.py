"""The service's edges: Envoy's protobuf (CheckRequest in, CheckResponse out), the admin
HTTP port (/metrics, /healthz, /readyz, /admin/*), Prometheus metrics and JSON logs.

Protobuf lives here and nowhere else; the pipeline works on plain dataclasses.
"""
