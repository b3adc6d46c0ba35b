"""Governance metrics: tokens per tenant with the bounded client_id label set."""

from prometheus_client import generate_latest

from authz.edge.metrics import OTHER_TENANTS, Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_tokens_per_tenant_bounded_like_tenant_requests() -> None:
    metrics = Metrics(tenant_cap=2)
    metrics.metered("acme", 10, 5)
    metrics.metered("globex", 1, 0)
    metrics.metered("initech", 7, 3)  # over the cap: counted under _other
    metrics.metered("umbrella", 0, 2)
    metrics.metered("acme", 1, 1)
    assert sample(metrics, "authz_tokens_total", client_id="acme", kind="input") == 11
    assert sample(metrics, "authz_tokens_total", client_id="acme", kind="output") == 6
    assert sample(metrics, "authz_tokens_total", client_id=OTHER_TENANTS, kind="input") == 7
    assert sample(metrics, "authz_tokens_total", client_id=OTHER_TENANTS, kind="output") == 5
    assert "initech" not in generate_latest(metrics.registry).decode()
    assert sample(metrics, "authz_metered_requests_total") == 5


def test_rejections_and_redis_health() -> None:
    metrics = Metrics()
    metrics.limit_rejected("user_concurrent_requests")
    metrics.limit_rejected("user_concurrent_requests")
    assert sample(metrics, "authz_limit_rejections_total",
                  limit="user_concurrent_requests") == 2
    metrics.store_up(True)
    assert sample(metrics, "authz_redis_up") == 1
    metrics.store_up(False)
    metrics.store_fallback()
    assert sample(metrics, "authz_redis_up") == 0
    assert sample(metrics, "authz_redis_fallback_total") == 1
