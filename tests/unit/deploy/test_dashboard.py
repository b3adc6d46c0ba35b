"""The Grafana dashboard only queries metrics the services really expose."""

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from authz.edge.metrics import Metrics, StatsCollector

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "openai-relay.json"


def test_every_authz_series_in_the_dashboard_exists():
    metrics = Metrics()
    metrics.registry.register(StatsCollector(lambda: [("key", "hit", 1.0)],
                                             lambda: [("vault", 0.0)], lambda: 0.0))
    metrics.count("allowed", "firebase", 0.001)
    metrics.count_tenant("acme")
    metrics.metered("acme", 3, 4)
    metrics.limit_rejected("user_requests_per_minute")
    metrics.store_fallback()
    exposed = {line.split("{")[0].split(" ")[0]
               for line in generate_latest(metrics.registry).decode().splitlines()
               if line and not line.startswith("#")}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\b(authz_[a-z_]+)", target["expr"])}
    assert queried
    assert queried <= exposed, queried - exposed
