"""`authz serve`: the ext_authz gRPC service, its health service and its metrics.

Wiring only: build the pieces from Settings, serve Envoy's Check RPC, report health,
stop gracefully on SIGTERM/SIGINT (in-flight checks finish, new ones are refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz.credentials.identity import IdentityCache
from authz.credentials.jose.certs import CertStore
from authz.credentials.verifiers import build_token_verifiers
from authz.edge import logs
from authz.edge.access_log import AccessLogServicer, access_log_handler
from authz.edge.admin_grpc import AdminServicer
from authz.edge.admin_grpc import add_to_server as add_admin_to_server
from authz.edge.admin_http import AdminServer
from authz.edge.envoy_check import CheckRequest, ResponseEncoder, check_input
from authz.edge.grpc_method import one_method_handler
from authz.edge.metrics import Metrics, StatsCollector
from authz.errors import AddressInUse
from authz.governance.limiter import GovernanceLimiter
from authz.governance.usage_feed import UsageFeed
from authz.pipeline.decision import Allow, Authorizer
from authz.settings import Settings, format_addr
from authz.tenants.key_cache import KeyCache
from authz.tenants.vault import VaultTenantStore
from authz.tenants.vault_login import token_provider

if TYPE_CHECKING:
    from authz.fastpath.xds import FastPathControl
    from authz.governance.redis_store import RedisStore
    from authz.governance.usage_relay import RedisUsageRelay

log = logging.getLogger(__name__)

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"
_GRPC_OPTIONS = [
    ("grpc.so_reuseport", 0),
    # A CheckRequest carries the request body (envoy.yaml: max_request_bytes 16 MiB)
    # plus a few headers; 1 MiB more than the body is ample for the rest.
    ("grpc.max_receive_message_length", 17 << 20),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class AuthzService:
    """Everything one process needs to decide checks, built once from Settings."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(tenants=settings.metrics_tenants,
                                          tenant_cap=settings.metrics_tenant_cap)
        self.certs = CertStore(settings.firebase_certs_url)
        # One login, shared by every Vault reader.
        vault_tokens = token_provider(settings.vault_login)
        self.vault_tokens = vault_tokens
        self.vault = VaultTenantStore(
            settings.vault_addr, vault_tokens,
            mount=settings.vault_mount, path_template=settings.vault_path,
        )
        self.keys = KeyCache(
            self.vault,
            ttl_s=settings.key_cache_ttl_s,
            stale_if_error_s=settings.key_stale_if_error_s,
            negative_ttl_s=settings.key_negative_ttl_s,
        )
        self.identities = IdentityCache(settings.token_cache_size,
                                        max_age_s=settings.identity_cache_ttl_s)
        # Every enabled token type behind one dispatcher (Firebase, OIDC, client keys...).
        self.tokens = build_token_verifiers(settings, self.certs, vault_tokens)
        # Limits and the usage ledger: in this process, or shared through Redis.
        self.limiter = GovernanceLimiter(_redis_store(settings), events=self.metrics)
        self.authorizer = Authorizer(
            self.tokens,
            self.keys,
            identity_cache=self.identities,
            default_policy=settings.default_policy,
            limiter=self.limiter,
        )
        self.access_log = AccessLogServicer(self.limiter.settle_nowait)
        # Every metered request, for the Admin API's watchers (and, with Redis, for
        # every other replica's).
        self.usage_feed = UsageFeed()
        self.limiter.listeners.append(self.usage_feed.publish)
        self.usage_relay = _usage_relay(settings, self.usage_feed)
        if self.usage_relay is not None:
            self.limiter.listeners.append(self.usage_relay.publish)
        self.encoder = ResponseEncoder()
        self.vault_pinged = False
        self.in_flight = 0
        self.fast_path: FastPathControl | None = None  # AUTHZ_FAST_PATH=on: set by serve()
        self.metrics.registry.register(
            StatsCollector(self._cache_events, self._source_errors, lambda: self.in_flight)
        )

    async def check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        started = time.perf_counter()
        self.in_flight += 1
        try:
            decision = await self.authorizer.check(check_input(request))
        finally:
            self.in_flight -= 1
        if isinstance(decision, Allow):
            outcome = "allowed"
            self.metrics.count_tenant(decision.client_id)
        else:
            outcome = decision.error.reason
            if log.isEnabledFor(logging.DEBUG) or decision.error.status >= 500:
                log.log(
                    logging.WARNING if decision.error.status >= 500 else logging.DEBUG,
                    "check denied",
                    extra={"reason": outcome, "status": decision.error.status,
                           "cause": decision.error.log_detail},
                )
        self.metrics.count(outcome, decision.token_type, time.perf_counter() - started)
        return self.encoder.encode(decision)

    @property
    def vault_reached(self) -> bool:
        return self.vault_pinged or self.keys.stats.source_successes > 0

    def readiness(self) -> dict[str, Any]:
        """Ready once we can verify tokens (certs loaded) and have reached Vault once."""
        certs, vault = self.tokens.keys_loaded, self.vault_reached
        return {"ready": self.tokens.ready and vault, "certs_loaded": certs,
                "vault_reached": vault,
                **self.tokens.readiness()}

    def invalidate(self, client_id: str | None) -> None:
        """Everything cached about a tenant (or all): its key, the identities verified
        for it, client-key records and Firebase user statuses, and with the fast path on,
        Envoy's token cache (a new config). Reads in flight lose."""
        self.keys.invalidate(client_id)
        self.tokens.invalidate(client_id)
        self.identities.clear(client_id)
        if self.fast_path is not None:
            self.fast_path.poke(client_id)

    async def watch_readiness(self, health_servicer: health.aio.HealthServicer) -> None:
        """Keep gRPC health and the ready gauge in step with readiness; ping Vault
        until it has answered once."""
        last: bool | None = None
        said_unreachable = False
        while True:
            if not self.vault_reached:
                self.vault_pinged = await asyncio.to_thread(self.vault.ping)
                if not self.vault_pinged and not said_unreachable:
                    # Once, naming the address: the retries that follow say nothing new.
                    log.warning("vault not reachable yet: not ready until it answers",
                                extra={"vault": self.settings.vault_addr})
                    said_unreachable = True
                elif self.vault_pinged and said_unreachable:
                    log.info("vault reachable", extra={"vault": self.settings.vault_addr})
            ready = bool(self.readiness()["ready"])
            if ready != last:
                status = (health_pb2.HealthCheckResponse.SERVING if ready
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                for name in ("", AUTHORIZATION_SERVICE):
                    await health_servicer.set(name, status)
                self.metrics.ready.set(1 if ready else 0)
                log.info("readiness changed", extra=self.readiness())
                last = ready
            await asyncio.sleep(1.0 if not ready else 5.0)

    def _cache_events(self) -> Iterable[tuple[str, str, float]]:
        k = self.keys.stats
        return [
            ("token", "hit", self.identities.hits), ("token", "miss", self.identities.misses),
            ("key", "hit", k.hits), ("key", "miss", k.misses), ("key", "stale", k.stale_served),
            ("key", "source_read", k.source_reads), ("cert", "fetch", self.certs.fetch_count),
        ]

    def _source_errors(self) -> Iterable[tuple[str, float]]:
        return [("vault", self.keys.stats.source_errors), ("certs", self.certs.error_count)]


def _check_handler(service: AuthzService) -> grpc.GenericRpcHandler:
    # Responses are pre-serialized bytes (see ResponseEncoder).
    return one_method_handler(AUTHORIZATION_SERVICE, "Check",
                              grpc.unary_unary_rpc_method_handler, service.check,
                              CheckRequest)


def _fast_path(service: AuthzService, server: grpc.aio.Server) -> FastPathControl:
    """AUTHZ_FAST_PATH=on: the ADS server on the same port, and its control loop."""
    from authz.credentials.oidc import OidcVerifier
    from authz.fastpath.resources import FastIssuer, firebase_issuer, oidc_issuer
    from authz.fastpath.tenants import TenantSource
    from authz.fastpath.xds import AdsServer, FastPathControl, add_to_server
    from authz.tenants.vault import KvStore

    settings = service.settings
    ads = AdsServer()
    add_to_server(ads, server)
    kv = KvStore(settings.vault_addr, service.vault_tokens, mount=settings.vault_mount)
    # Firebase tokens that need more than Envoy can check (emulator tokens, the
    # revocation check) all stay on ext_authz: Firebase is not handed to Envoy then.
    serve_firebase = bool(settings.firebase_project_id) and not (
        settings.firebase_emulator_mode or settings.firebase_check_revoked)

    def issuers() -> list[FastIssuer]:
        """The issuers Envoy verifies, with the keys the service holds right now."""
        found = []
        if serve_firebase:
            found.append(firebase_issuer(settings.firebase_project_id,
                                         service.certs.current(), settings.client_id_claims))
        for index, config in enumerate(settings.oidc_issuers):
            verifier = service.tokens.oidc.get(config.issuer)
            if isinstance(verifier, OidcVerifier):
                found.append(oidc_issuer(index, config, verifier.keys.current()))
        return found

    control = FastPathControl(
        ads,
        # A tenant without a policy gets AUTHZ_DEFAULT_POLICY, as on ext_authz.
        TenantSource(kv, settings.vault_path, default_policy=settings.default_policy),
        issuers,
        clock_skew_s=settings.clock_skew_s,
        exhausted=service.limiter.exhausted,
    )
    service.limiter.listeners.append(lambda metered: control.settled(metered.client_id))
    return control


async def serve(settings: Settings) -> None:
    logs.configure(settings.log_level)
    service = AuthzService(settings)
    server = grpc.aio.server(options=_GRPC_OPTIONS)
    server.add_generic_rpc_handlers([_check_handler(service),
                                     access_log_handler(service.access_log)])
    fast_path = _fast_path(service, server) if settings.fast_path else None
    service.fast_path = fast_path
    add_admin_to_server(AdminServicer(
        usage=service.limiter.usage, invalidate=service.invalidate, feed=service.usage_feed,
        fast_path=fast_path.status if fast_path is not None else None), server)
    if fast_path is not None:
        from authz.edge.meter_log import MeterLogServicer, meter_log_handler

        # Requests the fast path decided alone come back on Envoy's lighter log.
        server.add_generic_rpc_handlers([meter_log_handler(
            MeterLogServicer(service.limiter.settle_nowait))])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    grpc_addr = format_addr(settings.grpc_addr)
    try:
        # so_reuseport is off (_GRPC_OPTIONS): a port another process holds is refused.
        bound = server.add_insecure_port(grpc_addr)
    except RuntimeError:
        bound = 0
    if not bound:
        raise AddressInUse("AUTHZ_GRPC_ADDR", grpc_addr, "already in use or not bindable")
    await server.start()

    admin: AdminServer | None = None
    if settings.metrics_addr is not None:
        loop = asyncio.get_running_loop()

        def invalidate_on_loop(client_id: str | None) -> None:
            loop.call_soon_threadsafe(service.invalidate, client_id)

        def usage_on_loop(client_id: str, user: str | None) -> dict[str, object]:
            # The ledger lives on the event loop (and may read Redis): ask it there.
            future = asyncio.run_coroutine_threadsafe(
                service.limiter.usage(client_id, user), loop)
            return future.result(timeout=5)

        try:
            admin = AdminServer(
                *settings.metrics_addr,
                registry=service.metrics.registry,
                readiness=service.readiness,
                invalidate=invalidate_on_loop,
                usage=usage_on_loop,
            )
        except OSError as exc:
            await server.stop(0)
            cause = ("already in use" if exc.errno == errno.EADDRINUSE
                     else f"not bindable ({exc.strerror})")
            raise AddressInUse("AUTHZ_METRICS_ADDR", format_addr(settings.metrics_addr),
                               cause) from None
        admin.start()

    # First cert fetch before the first health report; a failure is not fatal (checks
    # answer 500 until certs arrive, the refresher keeps trying, health says NOT_SERVING).
    await service.tokens.start()
    await service.limiter.start()
    if service.usage_relay is not None:
        await service.usage_relay.start()
    service.vault.start_token_renewal()
    if fast_path is not None:
        fast_path.start()
    readiness = asyncio.ensure_future(service.watch_readiness(health_servicer))
    log.info("authz serving", extra={
        "grpc": grpc_addr,
        "metrics": settings.metrics_addr and format_addr(settings.metrics_addr),
        "certs_loaded": service.tokens.keys_loaded,
        "vault": settings.vault_addr,
    })

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    grace_s = settings.drain_timeout_s
    log.info("authz stopping: finishing in-flight checks", extra={"grace_s": grace_s})
    readiness.cancel()
    await health_servicer.enter_graceful_shutdown()
    if fast_path is not None:
        await fast_path.stop()
        fast_path.ads.close()
    await server.stop(grace_s)
    await service.tokens.stop()
    await service.limiter.close()
    if service.usage_relay is not None:
        await service.usage_relay.close()
    await service.vault.stop_token_renewal()
    if admin is not None:
        admin.stop()
    with contextlib.suppress(Exception):
        service.keys.close()
    log.info("authz stopped")


def _usage_relay(settings: Settings, feed: UsageFeed) -> RedisUsageRelay | None:
    if not settings.redis_url:
        return None
    from authz.governance.usage_relay import RedisUsageRelay

    return RedisUsageRelay(settings.redis_url, feed)


def _redis_store(settings: Settings) -> RedisStore | None:
    if not settings.redis_url:
        return None
    # Imported only here: redis-py costs ~8 MB of memory a relay without Redis never uses.
    from authz.governance.redis_store import RedisStore

    return RedisStore(settings.redis_url, timeout_s=settings.redis_timeout_s)
