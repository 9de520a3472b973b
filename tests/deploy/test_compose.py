"""docker-compose.yml and the Dockerfiles, checked without a Docker engine: the file parses, every host
path it bind-mounts exists in the repository, and the roles keep the promises the stack makes (GPUs,
heartbeat-only liveness, restart policies, ports, the observability profile on the shipped files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gate.judging.policy import load_policies

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))
LONG_RUNNING = ("redis", "postgres", "worker", "gate", "api", "prometheus", "alertmanager", "grafana")


def host_path(volume: str) -> str | None:
    """The host side of a bind mount ("./x:/y:ro", "${IMAGE_ROOT:-./images}:/images"); None for a named volume."""
    source = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", volume.split(":/", 1)[0])
    return source if source.startswith((".", "/")) else None


def test_every_bind_mounted_host_path_exists_in_the_repository() -> None:
    mounts = [host_path(v) for service in SERVICES.values() for v in service.get("volumes", [])]
    bound = sorted({path for path in mounts if path is not None})
    assert bound == [
        "./deploy/alertmanager/alertmanager.yml", "./deploy/grafana/lpips-gate.json", "./deploy/grafana/provisioning",
        "./deploy/prometheus/prometheus.yml", "./deploy/prometheus/rules.yml", "./images", "./policies.example.toml",
    ]
    assert [path for path in bound if not (ROOT / path).exists()] == []
    volumes = [v for service in SERVICES.values() for v in service.get("volumes", [])]
    named = {v.split(":")[0] for v in volumes if host_path(v) is None}
    assert named <= set(COMPOSE["volumes"])


def test_the_example_policy_the_gate_reads_is_valid() -> None:
    assert SERVICES["gate"]["volumes"] == ["./policies.example.toml:/config/policies.toml:ro"]
    assert SERVICES["gate"]["command"][:3] == ["gate", "--policies", "/config/policies.toml"]
    assert set(load_policies(ROOT / "policies.example.toml").suites) == {"example"}


def test_the_services_of_the_stack() -> None:
    assert set(SERVICES) == {"postgres", "redis", "migrate", "weights", "worker", "gate", "api", "prometheus",
                             "alertmanager", "grafana"}
    assert SERVICES["migrate"]["command"] == ["db", "upgrade"]
    assert "--skip-verified" in SERVICES["weights"]["command"]
    assert SERVICES["api"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "--http-port" in SERVICES["gate"]["command"]
    for name in LONG_RUNNING:
        assert SERVICES[name]["restart"] == "unless-stopped", name
    for name in ("migrate", "weights"):  # one-shot: no restart, and not probed as a daemon
        assert SERVICES[name]["restart"] == "no", name
        assert SERVICES[name]["healthcheck"] == {"disable": True}, name


def test_workers_get_every_gpu_and_a_heartbeat_only_liveness() -> None:
    worker = SERVICES["worker"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["count"], device["capabilities"]) == ("nvidia", "all", ["gpu"])
    assert worker["healthcheck"]["test"] == ["CMD", "lpips-gate", "health", "--check", "live"]
    assert worker["healthcheck"]["start_period"] == "300s"
    assert worker["environment"]["LPIPS_GATE_METRICS_PORT"] == "9464"
    assert worker["build"]["dockerfile"] == "deploy/docker/worker.Dockerfile"
    for name in ("migrate", "gate", "api"):  # the light image: no torch
        assert SERVICES[name]["build"]["dockerfile"] == "deploy/docker/gate.Dockerfile", name


def test_the_observability_profile_uses_the_shipped_rules_and_dashboard() -> None:
    for name in ("prometheus", "alertmanager", "grafana"):
        assert SERVICES[name]["profiles"] == ["observability"], name
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert prometheus["rule_files"] == ["/etc/prometheus/rules.yml"]
    assert "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in SERVICES["prometheus"]["volumes"]
    targets = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert targets["lpips-gate"]["static_configs"][0]["targets"] == ["gate:9465"]
    assert targets["lpips-gate-worker"]["dns_sd_configs"][0]["port"] == 9464


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_run_as_non_root_with_a_healthcheck_and_the_package_from_a_wheel(dockerfile: Path) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    assert re.search(r"^USER (?!root|0\b)\S+", text, flags=re.M)
    assert re.search(r"^HEALTHCHECK ", text, flags=re.M)
    assert "pip wheel" in text and "-e " not in text  # never editable
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (ROOT / source).exists(), source
    dependencies, package = text.index("-r /tmp/requirements.txt"), text.index("COPY --from=wheel")
    assert dependencies < package  # the dependency layer is built before the source arrives


def test_the_build_context_leaves_out_what_the_images_do_not_need() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", "tests", "bench", "images"} <= set(ignored)
    assert DOCKERFILES and [path.name for path in DOCKERFILES] == ["gate.Dockerfile", "worker.Dockerfile"]
