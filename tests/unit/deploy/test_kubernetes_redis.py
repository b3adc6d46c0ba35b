"""deploy/kubernetes with the shared Redis (components/redis via overlays/redis), offline:
every object validates strictly, the authz sidecar's settings point at the Redis
Service, and Redis runs locked down with persistence off."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.support.kubernetes_manifests import find, kustomize, pod_containers

VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return kustomize("redis")


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of this kind and name (a generated ConfigMap: name-<hash>)."""
    [doc] = [d for d in find(docs, kind)
             if d["metadata"]["name"] == name or (
                 kind == "ConfigMap" and d["metadata"]["name"].startswith(name + "-")
                 and len(d["metadata"]["name"]) == len(name) + 11)]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates(docs, version):
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_authz_reads_the_redis_service(docs):
    redis = by_name(docs, "Deployment", "openai-relay-redis")
    service = by_name(docs, "Service", "openai-relay-redis")
    relay = by_name(docs, "Deployment", "openai-relay")
    assert service["metadata"]["namespace"] == relay["metadata"]["namespace"] == \
        redis["metadata"]["namespace"]
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    [port] = service["spec"]["ports"]
    authz = pod_containers(relay)["authz"]
    [ref] = [e["configMapRef"]["name"] for e in authz["envFrom"]]
    config = by_name(docs, "ConfigMap", "openai-relay-authz")
    assert config["metadata"]["name"] == ref  # the generated (hashed) name is wired
    url = config["data"]["AUTHZ_REDIS_URL"]
    assert url == f"redis://{service['metadata']['name']}:{port['port']}/0"
    # The example's own settings survive the merge.
    assert config["data"]["AUTHZ_FIREBASE_PROJECT_ID"] == "my-firebase-project"


def test_redis_is_locked_down_and_keeps_nothing_on_disk(docs):
    redis = by_name(docs, "Deployment", "openai-relay-redis")
    [container] = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    security = container["securityContext"]
    assert security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["memory"]


def test_base_and_example_stay_without_redis():
    for name in ("base", "example"):
        docs = kustomize(name)
        assert all("redis" not in d["metadata"]["name"] for d in docs)
