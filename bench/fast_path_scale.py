"""The fast path's control plane at scale: N tenants pushed to a real Envoy over xDS.

    python -m bench.fast_path_scale [--tenants 10000] [--users 100000] [--rotations 3]
                                    [--vault-tenants 1000]

In one process: the real AdsServer and FastPathControl (authz/fastpath/) on a loopback
gRPC port, fed a tenant list held in memory (Vault is measured apart, below); one real
Envoy rendered from the template with the fast path on. Every 10th tenant has a policy
Envoy enforces (endpoint rules and a model list), every 20th a token budget, and 1% of
`--users` users (spread over the budgeted tenants) have used theirs up, so the pushed
budget table is that size. Prints: the time to build the resources and their size, the
time until Envoy has accepted the first push, a rotation (one tenant's key changed) and
a budget change, and Envoy's RSS before and after.

Then Vault (OpenBao dev server, `--vault-tenants` records): one full read of every
tenant (the control plane's start and its periodic full read), and a rotation through
`authz tenant`'s store, which the control plane then reads alone (the change log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz.fastpath.resources import FastTenant, build_resources, firebase_issuer
from authz.fastpath.tenants import FULL_READ_EVERY_S, QUICK_FULL_READ_S, TenantSource
from authz.fastpath.xds import AdsServer, FastPathControl, add_to_server
from authz.governance.policy import parse_policy
from authz.stack.binaries import envoy_binary
from authz.stack.envoy_config import EnvoyParams, render
from authz.tenants.vault import KvStore, TenantKey, VaultTenantStore
from tests.support.firebase import FirebaseKeys
from tests.support.processes import ManagedProcess, free_port, wait_for_http
from tests.support.vault import BaoDevServer

LUA_VERSION = "extension_config_discovery.http_filter.relay.fast_path.lua.update_success"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def accepted(admin_port: int) -> int:
    url = f"http://127.0.0.1:{admin_port}/stats?format=json&filter=fast_path.lua.update_success"
    with urllib.request.urlopen(url, timeout=5) as response:
        stats = json.loads(response.read())["stats"]
    return next((s["value"] for s in stats if s["name"] == LUA_VERSION), 0)


async def wait_accepted(admin_port: int, count: int, limit_s: float = 120) -> float:
    started = time.perf_counter()
    while accepted(admin_port) < count:
        if time.perf_counter() - started > limit_s:
            raise TimeoutError(f"Envoy did not accept push {count} within {limit_s}s")
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


GOVERNED = parse_policy({"endpoints": "inference", "models": ["gpt-4o-mini", "gpt-4.1-*"]})
BUDGETED = parse_policy({"endpoints": "inference", "limits": {"user_tokens_per_day": 100_000}})


class Tenants:
    def __init__(self, n: int) -> None:
        self.tenants = [FastTenant(f"tenant-{i:05d}", f"sk-scale-{secrets.token_hex(24)}",
                                   f"org-{i:05d}" if i % 3 == 0 else None,
                                   policy=BUDGETED if i % 20 == 0 else
                                   GOVERNED if i % 10 == 0 else None)
                        for i in range(n)]

    def refresh(self, named: frozenset[str] = frozenset(), everything: bool = False
                ) -> list[FastTenant]:
        return list(self.tenants)


async def run(args: argparse.Namespace, work: Path) -> None:
    keys = FirebaseKeys("bench-relay")
    public: dict[str, RSAPublicKey] = {}
    for kid, pem in keys.certs_json().items():
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        if not isinstance(key, RSAPublicKey):
            raise TypeError(f"signing key {kid} is not RSA")
        public[kid] = key
    tenants = Tenants(args.tenants)
    budgeted = [t.client_id for t in tenants.tenants if t.policy is BUDGETED]
    used_up_users = args.users // 100
    exhausted: dict[str, frozenset[str]] = {}
    for u in range(used_up_users):
        client_id = budgeted[u % len(budgeted)]
        exhausted[client_id] = exhausted.get(client_id, frozenset()) | {f"user-{u:06d}"}
    state: dict[str, bool | frozenset[str]] = dict(exhausted)

    async def budget_state(budgets: object) -> dict[str, bool | frozenset[str]]:
        return dict(state)

    started = time.perf_counter()
    issuers = [firebase_issuer("bench-relay", public, ("clientId", "firebase.tenant"))]
    resources = build_resources(issuers, tenants.tenants, 30, state)
    build_s = time.perf_counter() - started
    size = sum(len(r.SerializeToString()) for r in resources.values())
    print(f"{args.tenants} tenants ({len(budgeted)} with a budget, "
          f"{sum(t.policy is GOVERNED for t in tenants.tenants)} with endpoint and model "
          f"rules), {args.users} users of which {used_up_users} over budget: resources "
          f"built in {build_s * 1000:.0f} ms, {size / 1e6:.2f} MB serialized")

    port = free_port()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_send_message_length", 64 << 20)])
    ads = AdsServer()
    add_to_server(ads, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    control = FastPathControl(ads, tenants, lambda: issuers,  # type: ignore[arg-type]
                              clock_skew_s=30, poll_s=3600, exhausted=budget_state)
    admin = free_port()
    config = work / "envoy.yaml"
    config.write_text(render(EnvoyParams(listen_port=free_port(), admin_port=admin,
                                         health_port=free_port(), authz_port=port,
                                         upstream_url="http://127.0.0.1:9", fast_path=True)))
    envoy = ManagedProcess([envoy_binary(), "-c", str(config), "--disable-hot-restart",
                            "--concurrency", "1", "--log-level", "warn"], {},
                           work / "envoy.log", name="envoy-scale").start()
    try:
        wait_for_http(f"http://127.0.0.1:{admin}/ready", timeout=30, process=envoy)
        before = rss_mb(envoy.pid)
        started = time.perf_counter()
        await control.refresh()
        pushed_s = time.perf_counter() - started
        took = await wait_accepted(admin, 1)
        print(f"first push: control refresh {pushed_s * 1000:.0f} ms, accepted by Envoy "
              f"{took * 1000:.0f} ms later; Envoy RSS {before:.0f} -> {rss_mb(envoy.pid):.0f} MB")
        for i in range(args.rotations):
            victim = tenants.tenants[i * 997 % len(tenants.tenants)]
            tenants.tenants[i * 997 % len(tenants.tenants)] = FastTenant(
                victim.client_id, f"sk-rotated-{secrets.token_hex(24)}",
                victim.organization, victim.project, victim.policy)
            started = time.perf_counter()
            await control.refresh()
            took = await wait_accepted(admin, 2 + i)
            print(f"rotation {i + 1}: one key changed, in Envoy after "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms "
                  f"(Envoy RSS {rss_mb(envoy.pid):.0f} MB)")
        state[budgeted[-1]] = True  # one budgeted tenant's day is used up
        started = time.perf_counter()
        control.settled(budgeted[-1])  # as the limiter reports a metered request
        await control.refresh_budgets()
        await wait_accepted(admin, 2 + args.rotations)
        print(f"budget: one tenant's budget used up, in Envoy after "
              f"{(time.perf_counter() - started) * 1000:.0f} ms "
              f"(Envoy RSS {rss_mb(envoy.pid):.0f} MB)")
    finally:
        envoy.stop()
        ads.close()
        await server.stop(0)


def vault_read(n: int, work: Path) -> None:
    """Reading n tenants from a real OpenBao, as the control plane does it."""
    with BaoDevServer(workdir=work / "bao") as bao:
        client = bao.client()
        started = time.perf_counter()
        for i in range(n):
            client.secrets.kv.v2.create_or_update_secret(
                path=f"openai/clients/tenant-{i:05d}", secret={"api_key": f"sk-{i}"},
                mount_point="secret")
        print(f"OpenBao: {n} tenants written in {time.perf_counter() - started:.1f} s")
        kv = KvStore(bao.addr, bao.token)
        source = TenantSource(kv, "openai/clients/{client_id}")
        started = time.perf_counter()
        read = source.refresh()
        print(f"OpenBao: one full read of {len(read)} tenants (list + one read each) took "
              f"{time.perf_counter() - started:.2f} s: at start, then every "
              f"{FULL_READ_EVERY_S:.0f} s or ten full reads' time (every poll when under "
              f"{QUICK_FULL_READ_S} s)")
        store = VaultTenantStore(bao.addr, bao.token)
        for attempt in range(3):
            store.write(f"tenant-{attempt * 7:05d}", TenantKey(f"sk-rotated-{attempt}"))
            before = source.tenants_read
            started = time.perf_counter()
            read = source.refresh()
            took = time.perf_counter() - started
            rotated = next(t for t in read if t.client_id == f"tenant-{attempt * 7:05d}")
            assert rotated.api_key == f"sk-rotated-{attempt}"
            print(f"OpenBao: rotation {attempt + 1} through `authz tenant`'s store: the "
                  f"next poll read the change log and {source.tenants_read - before} "
                  f"tenant(s) in {took * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rotations", type=int, default=3)
    parser.add_argument("--vault-tenants", type=int, default=1_000,
                        help="tenants for the Vault read measurement (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fast-path-scale-") as tmp:
        asyncio.run(run(args, Path(tmp)))
        if args.vault_tenants:
            vault_read(args.vault_tenants, Path(tmp))


if __name__ == "__main__":
    main()
