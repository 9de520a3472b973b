"""deploy/k8s: `kubectl kustomize` renders the base, the core resources pass strict schema validation
(kubernetes-validate), and the custom resources (KEDA, Prometheus Operator) say what the rest expects."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CORE = ("ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "Deployment", "Job")
CUSTOM = {"ScaledObject": "keda.sh/v1alpha1", "ServiceMonitor": "monitoring.coreos.com/v1"}
SCHEMA_VERSION = "1.30.0"  # the oldest Kubernetes the base is written for


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: scripts/test.sh installs it"
    done = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "k8s")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def resource(kind: str, name: str) -> dict[str, Any]:
    [found] = [doc for doc in rendered() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def test_the_base_renders_every_resource() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered())
    assert kinds == [
        ("ConfigMap", "lpips-gate-config"), ("ConfigMap", "lpips-gate-policies"),
        ("Deployment", "lpips-gate-api"), ("Deployment", "lpips-gate-gate"), ("Deployment", "lpips-gate-worker"),
        ("Job", "lpips-gate-migrate"), ("PersistentVolumeClaim", "lpips-gate-images"),
        ("ScaledObject", "lpips-gate-worker"), ("Secret", "lpips-gate-secrets"),
        ("Service", "lpips-gate-api"), ("Service", "lpips-gate-gate"), ("Service", "lpips-gate-worker"),
        ("ServiceMonitor", "lpips-gate"),
    ]
    assert {doc["metadata"]["labels"]["app.kubernetes.io/part-of"] for doc in rendered()} == {"lpips-gate"}


@pytest.mark.parametrize("doc", [d for d in rendered() if d["kind"] in CORE],
                         ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_core_resources_pass_strict_schema_validation(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)  # raises on any unknown or invalid field


def test_custom_resources_are_the_expected_api_versions() -> None:
    assert {doc["kind"]: doc["apiVersion"] for doc in rendered() if doc["kind"] not in CORE} == CUSTOM


def _container(deployment: str) -> dict[str, Any]:
    return resource("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def test_workers_have_a_gpu_heartbeat_liveness_and_time_to_finish_a_task() -> None:
    spec = resource("Deployment", "lpips-gate-worker")["spec"]["template"]["spec"]
    worker = spec["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["livenessProbe"]["exec"]["command"] == ["lpips-gate", "health", "--check", "live"]
    assert worker["readinessProbe"]["exec"]["command"] == ["lpips-gate", "health", "--check", "ready"]
    assert spec["terminationGracePeriodSeconds"] >= 360  # Settings.task_time_limit
    assert spec["initContainers"][0]["args"][-1] == "--skip-verified"
    assert {"name": "LPIPS_GATE_METRICS_PORT", "value": "9464"} in worker["env"]


def test_gate_and_api_are_probed_over_http() -> None:
    for deployment, port in (("lpips-gate-gate", "metrics"), ("lpips-gate-api", "http")):
        container = _container(deployment)
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert "--http-port" in _container("lpips-gate-gate")["args"]
    assert _container("lpips-gate-api")["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert resource("Service", "lpips-gate-api")["spec"]["ports"][0]["port"] == 8080
    [migrate] = resource("Job", "lpips-gate-migrate")["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["db", "upgrade"]


def test_keda_watches_the_configured_queue() -> None:
    config = resource("ConfigMap", "lpips-gate-config")["data"]
    scaled = resource("ScaledObject", "lpips-gate-worker")["spec"]
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == config["LPIPS_GATE_QUEUE_NAME"]
    assert f"redis://{trigger['metadata']['address']}/{trigger['metadata']['databaseIndex']}" == (
        config["LPIPS_GATE_BROKER_URL"]
    )
    assert scaled["scaleTargetRef"]["name"] == "lpips-gate-worker"


def test_the_service_monitor_scrapes_the_gate_and_the_workers() -> None:
    monitor = resource("ServiceMonitor", "lpips-gate")["spec"]
    scraped = [doc for doc in rendered() if doc["kind"] == "Service"
               and all(doc["metadata"]["labels"].get(k) == v for k, v in monitor["selector"]["matchLabels"].items())]
    assert sorted(doc["metadata"]["name"] for doc in scraped) == ["lpips-gate-gate", "lpips-gate-worker"]
    ports = {port["name"] for doc in scraped for port in doc["spec"]["ports"]}
    assert ports == {endpoint["port"] for endpoint in monitor["endpoints"]}


def test_the_policies_config_map_is_the_example_policy_file() -> None:
    data = resource("ConfigMap", "lpips-gate-policies")["data"]["policies.toml"]
    assert data == (ROOT / "policies.example.toml").read_text(encoding="utf-8")
