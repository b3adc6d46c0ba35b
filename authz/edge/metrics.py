"""Prometheus metrics of the authz service, with bounded label sets only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from authz.errors import (
    ApiKeyNotFound,
    AuthenticationFailed,
    CertsUnavailable,
    ClientIdNotFound,
    InternalError,
    VaultUnavailable,
)

_DENIALS = (AuthenticationFailed, ClientIdNotFound, ApiKeyNotFound, InternalError,
            VaultUnavailable, CertsUnavailable)
OUTCOMES = ("allowed", *(cls.reason for cls in _DENIALS))


OTHER_TENANTS = "_other"


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        tenants: tuple[str, ...] = (),
        tenant_cap: int = 50,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        # Per-tenant series stay bounded: an allow-list, or the first tenant_cap seen;
        # every other tenant is counted under OTHER_TENANTS.
        self._tenant_allow = frozenset(tenants)
        self._tenant_cap = 0 if tenants else tenant_cap
        self.tenant_requests = Counter(
            "authz_tenant_allowed", "Allowed checks per tenant (bounded label set)",
            ["client_id"], registry=self.registry,
        )
        self._tenant_children: dict[str, Any] = {}
        self.checks = Counter(
            "authz_checks", "Checks decided, by outcome and token type",
            ["outcome", "token_type"], registry=self.registry,
        )
        self.check_seconds = Histogram(
            "authz_check_duration_seconds", "Time to decide one check, in the service",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.ready = Gauge("authz_ready", "1 when the service can verify tokens",
                           registry=self.registry)
        # Governance (authz.governance.limiter.LimiterEvents): metered tokens per tenant
        # (same bounded label set as authz_tenant_allowed), limit refusals, Redis health.
        self.tokens = Counter(
            "authz_tokens", "Tokens metered from the upstream's usage (or estimated)",
            ["client_id", "kind"], registry=self.registry,
        )
        self._token_children: dict[str, tuple[Any, Any]] = {}
        self.metered_requests = Counter(
            "authz_metered_requests", "Allowed requests settled from Envoy's access log",
            registry=self.registry,
        )
        self.limit_rejections = Counter(
            "authz_limit_rejections", "Requests refused by a limit or budget (429)",
            ["limit"], registry=self.registry,
        )
        self.redis_up = Gauge(
            "authz_redis_up",
            "1 while the shared Redis (AUTHZ_REDIS_URL) answers; 0 when down or unset",
            registry=self.registry,
        )
        self.redis_fallbacks = Counter(
            "authz_redis_fallback", "Redis calls that failed or timed out: counted locally",
            registry=self.registry,
        )
        # Pre-bind the hot-path children so a check costs a dict lookup, not a label parse.
        self._outcome = {
            (outcome, token_type): self.checks.labels(outcome, token_type)
            for outcome in OUTCOMES
            for token_type in ("firebase", "none")
        }

    def count(self, outcome: str, token_type: str, seconds: float) -> None:
        child = self._outcome.get((outcome, token_type))
        if child is None:
            child = self.checks.labels(outcome, token_type)
        child.inc()
        self.check_seconds.observe(seconds)

    def _tenant_label(self, client_id: str, children: dict[str, Any]) -> tuple[str, bool]:
        allowed = (client_id in self._tenant_allow if self._tenant_allow
                   else len(children) < self._tenant_cap)
        return (client_id if allowed else OTHER_TENANTS), allowed or len(children) < 100_000

    def count_tenant(self, client_id: str) -> None:
        child = self._tenant_children.get(client_id)
        if child is None:
            label, keep = self._tenant_label(client_id, self._tenant_children)
            child = self.tenant_requests.labels(label)
            if keep:
                self._tenant_children[client_id] = child
        child.inc()

    # -- LimiterEvents ---------------------------------------------------------------
    def limit_rejected(self, limit: str) -> None:
        self.limit_rejections.labels(limit).inc()

    def metered(self, client_id: str, input_tokens: int, output_tokens: int) -> None:
        self.metered_requests.inc()
        children = self._token_children.get(client_id)
        if children is None:
            label, keep = self._tenant_label(client_id, self._token_children)
            children = (self.tokens.labels(label, "input"), self.tokens.labels(label, "output"))
            if keep:
                self._token_children[client_id] = children
        if input_tokens:
            children[0].inc(input_tokens)
        if output_tokens:
            children[1].inc(output_tokens)

    def store_up(self, up: bool) -> None:
        self.redis_up.set(1 if up else 0)

    def store_fallback(self) -> None:
        self.redis_fallbacks.inc()


# (cache, event) -> cumulative count, and source -> cumulative error count, read at scrape.
CacheEvents = Callable[[], Iterable[tuple[str, str, float]]]
SourceErrors = Callable[[], Iterable[tuple[str, float]]]


class StatsCollector(Collector):
    """Exposes counters the caches keep themselves, so the hot path pays no metric cost."""

    def __init__(self, cache_events: CacheEvents, source_errors: SourceErrors,
                 in_flight: Callable[[], float]) -> None:
        self._cache_events = cache_events
        self._source_errors = source_errors
        self._in_flight = in_flight

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily("authz_checks_in_flight", "Checks being decided right now",
                                value=self._in_flight())
        events = CounterMetricFamily(
            "authz_cache_events", "Cache hits, misses and stale serves", labels=["cache", "event"]
        )
        for cache, event, value in self._cache_events():
            events.add_metric([cache, event], value)
        yield events
        errors = CounterMetricFamily(
            "authz_source_errors", "Errors reading Vault or fetching certs", labels=["source"]
        )
        for source, value in self._source_errors():
            errors.add_metric([source], value)
        yield errors
