"""deploy/kubernetes, checked offline: kustomize builds the base and the example overlay,
every object validates against the Kubernetes JSON schemas (strict: unknown fields are
errors) of several Kubernetes versions, and the pod has what the issue asks for. The
Envoy ConfigMap is the one template rendered, never a hand-edited copy.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest

from tests.support.kubernetes_manifests import (
    REPO,
    find,
    kustomize,
    pod_containers,
    probe_commands,
)

# Native sidecars (restartPolicy: Always on an init container) are on by default from 1.29.
KUBERNETES_VERSIONS = ("1.30", "1.33", kubernetes_validate.utils.latest_version())


@pytest.fixture(scope="module", params=["base", "example"])
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return kustomize(request.param)


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return kustomize("example")


def deployment_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = find(docs, "Deployment")
    return deployment


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(docs, version):
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: "
                        f"{exc.message} at {list(exc.path)}")


def test_the_kinds_the_deployment_needs(docs):
    kinds = sorted(doc["kind"] for doc in docs)
    for kind in ("ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "Service", "ServiceAccount"):
        assert kind in kinds


def test_one_pod_with_envoy_and_the_authz_sidecar(docs):
    deployment = deployment_of(docs)
    spec = deployment["spec"]["template"]["spec"]
    [envoy] = spec["containers"]
    [authz] = spec["initContainers"]
    assert envoy["name"] == "envoy"
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40")
    assert authz["name"] == "authz"
    assert authz["restartPolicy"] == "Always"  # a native sidecar
    env = {e["name"]: e.get("value") for e in authz["env"]}
    assert env["AUTHZ_GRPC_ADDR"] == "127.0.0.1:9001"  # never on the pod IP
    assert spec["serviceAccountName"] == "openai-relay"
    assert spec["automountServiceAccountToken"] is False


def test_locked_down_security_context(docs):
    spec = deployment_of(docs)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for name, container in pod_containers(deployment_of(docs)).items():
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] > 0, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in context["capabilities"], name


def test_requests_limits_and_probes(docs):
    containers = pod_containers(deployment_of(docs))
    for name, container in containers.items():
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
        assert "readinessProbe" in container, name
        assert "livenessProbe" in container, name
    # authz: gRPC health, asked from inside the pod (the service listens on loopback).
    health = ["/opt/authz/bin/python", "-m", "authz.edge.healthcheck"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert containers["authz"][kind]["exec"]["command"] == health
    # Envoy: its readiness listener's /ready.
    ready = containers["envoy"]["readinessProbe"]["httpGet"]
    assert ready["path"] == "/ready"
    ports = {p["name"]: p["containerPort"] for p in containers["envoy"]["ports"]}
    assert ports[ready["port"]] == 8081


def test_service_pdb_and_hpa_point_at_the_pods(docs):
    deployment = deployment_of(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    [service] = find(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    envoy_ports = {p["name"] for p in pod_containers(deployment)["envoy"]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in envoy_ports
    [pdb] = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [hpa] = find(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB can always let one pod go


def test_configmaps_are_mounted_by_their_generated_names(docs):
    names = {doc["metadata"]["name"] for doc in find(docs, "ConfigMap")}
    spec = deployment_of(docs)["spec"]["template"]["spec"]
    mounted = {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v}
    referenced = {ref["configMapRef"]["name"] for c in pod_containers(deployment_of(docs))
                  .values() for ref in c.get("envFrom", [])}
    assert mounted | referenced <= names
    vault_token = next(v for v in spec["volumes"] if v["name"] == "vault-token")
    [source] = vault_token["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "vault"


def test_envoy_configmap_is_the_template_rendered():
    """One source of truth: the ConfigMap's envoy.yaml is what the renderer makes of
    envoy/envoy.yaml now. If this fails, run scripts/render-kubernetes-envoy.py."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/render-kubernetes-envoy.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_overlay_sets_namespace_images_and_settings(example):
    assert {doc["metadata"].get("namespace") for doc in example
            if doc["kind"] != "Namespace"} == {"openai-relay"}
    [settings] = [d for d in find(example, "ConfigMap")
                  if d["metadata"]["name"].startswith("openai-relay-authz")]
    assert settings["data"]["AUTHZ_FIREBASE_PROJECT_ID"] == "my-firebase-project"
    assert settings["data"]["AUTHZ_VAULT_AUTH"] == "kubernetes"
    containers = pod_containers(deployment_of(example))
    assert containers["authz"]["image"] == "registry.example.com/openai-relay/authz:0.1.0"
    [namespace] = find(example, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_exec_probe_commands_are_listed():
    commands = probe_commands()
    assert set(commands) == {"authz"}
    assert set(commands["authz"]) == {"startupProbe", "readinessProbe", "livenessProbe"}


def test_prestop_waits_on_envoys_active_requests_within_the_grace_period(docs):
    """No fixed sleep: the hook polls Envoy's downstream_rq_active, bounded by a maximum
    that leaves the kubelet time to send SIGTERM inside terminationGracePeriodSeconds."""
    pod = deployment_of(docs)["spec"]["template"]["spec"]
    envoy = pod_containers(deployment_of(docs))["envoy"]
    script = envoy["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "downstream_rq_active" in script
    assert "drain_listeners?graceful" in script
    assert "sleep 20" not in script
    env = {item["name"]: item["value"] for item in envoy["env"]}
    assert 0 < int(env["PRESTOP_MIN_WAIT_S"]) < int(env["PRESTOP_MAX_WAIT_S"])
    assert int(env["PRESTOP_MAX_WAIT_S"]) + 5 <= pod["terminationGracePeriodSeconds"]
