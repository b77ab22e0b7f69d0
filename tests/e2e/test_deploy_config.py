"""End to end: three peers configured exactly as deploy/compose.yaml configures its containers
(and as deploy/kubernetes/statefulset.yaml configures its pods), as real processes, since
containers cannot run here.

Each peer runs in a network namespace of its own (netns.py) whose /etc/hosts (`ip netns exec`
bind-mounts /etc/netns/<namespace>/hosts over it) names the peers as the container network's
DNS does: n1, n2, n3 on a compose network; tokenvault-0.tokenvault ... under the headless
Service. cluster.toml addresses the peers by those names, all on port 7600, made from `init`'s
output by the steps docs/operations.md gives; each peer binds 0.0.0.0:7600 in its namespace. A
peer is started as the image starts it, `tokenvault node` without a flag, with the environment
of its compose service or of the StatefulSet's container (TOKENVAULT_ID from the pod's name);
the container paths of that environment (/etc/tokenvault, /run/secrets, /var/lib/tokenvault)
are mapped to directories of the test, the secret being a file apart from the configuration.
The healthcheck is the image's HEALTHCHECK command, run in the peer's namespace. Clients use the
CLI in a peer's namespace, by name (with TLS: certificates naming the peers' names, checked by
the client). Then every peer gets SIGTERM: each exits 0 within SIGTERM_EXIT_MAX_S, and after a
restart the data is intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.netns import Network, netns_problem
from tokenvault.cluster_init import init_cluster, renew_peer_certificates
from tokenvault.config import load_config
from tokenvault.peer_settings import PER_PEER_ENVIRONMENT_VARIABLES
from tokenvault.tls import client_context

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = REPO_ROOT / "deploy" / "compose.yaml"
STATEFULSET_PATH = REPO_ROOT / "deploy" / "kubernetes" / "statefulset.yaml"
PORT = 7600
READY_TIMEOUT_S = 30.0
SIGTERM_EXIT_MAX_S = 5.0  # "exits 0 within a few seconds"; the grace periods are 30 s
COMMAND_TIMEOUT_S = 30.0
# Where the containers mount things: each is mapped to a directory of the test.
CONFIG_MOUNT = "/etc/tokenvault"
SECRET_MOUNT = "/run/secrets"
DATA_MOUNT = "/var/lib/tokenvault"


def _compose_environment(peer_id: str) -> dict[str, str]:
    compose = yaml.safe_load(COMPOSE_PATH.read_text())
    environment: dict[str, Any] = compose["services"][peer_id]["environment"]
    return {name: str(value) for name, value in environment.items()}


def _statefulset_environment(pod: str) -> dict[str, str]:
    statefulset = yaml.safe_load(STATEFULSET_PATH.read_text())
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    environment = {}
    for variable in container["env"]:
        if "value" in variable:
            environment[variable["name"]] = str(variable["value"])
        else:  # the downward API: only the pod's own name is used
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
            environment[variable["name"]] = pod
    return environment


@dataclass(frozen=True, slots=True)
class Layout:
    """How one kind of deployment names and configures its peers."""

    peer_ids: tuple[str, str, str]  # n1.. as init makes them, or renamed
    address_host: Callable[[str], str]  # the name the others dial a peer by
    environment: Callable[[str], dict[str, str]]  # the container's environment


COMPOSE = Layout(("n1", "n2", "n3"), lambda peer: peer, _compose_environment)
KUBERNETES = Layout(
    ("tokenvault-0", "tokenvault-1", "tokenvault-2"),
    lambda pod: f"{pod}.tokenvault",
    _statefulset_environment,
)


class ContainerLikePeers:
    """The three peers, their namespaces' /etc/hosts, their 'container' directories."""

    def __init__(self, directory: Path, network: Network, layout: Layout, *, tls: bool) -> None:
        self.directory = directory
        self.network = network
        self.layout = layout
        self.tls = tls
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.hosts_dirs: list[Path] = []
        self.mounts = {
            CONFIG_MOUNT: directory / "etc-tokenvault",
            SECRET_MOUNT: directory / "run-secrets",
        }
        made = init_cluster(directory / "made", nodes=3, base_port=PORT, tls=tls)
        # The documented steps: ids renamed where the layout wants, addresses by name, every
        # peer on the same port.
        config = made.config_path.read_text()
        for peer, peer_id in zip(made.peers, layout.peer_ids, strict=True):
            for old, new in (
                (f"id = {json.dumps(peer.id)}", f"id = {json.dumps(peer_id)}"),
                (
                    f"address = {json.dumps(peer.address)}",
                    f'address = "{layout.address_host(peer_id)}:{PORT}"',
                ),
            ):
                assert config.count(old) == 1, old
                config = config.replace(old, new)
        made.config_path.write_text(config)
        if tls:  # certificates naming the new ids and names, as `renew-certs` makes them
            renew_peer_certificates(load_config(made.config_path))
        self.keys = json.loads((directory / "made" / "keys.json").read_text())
        # What the containers mount: the configuration (with tls/), the secret apart, the data.
        container = layout.environment(layout.peer_ids[0])
        config_path = self._mapped(container["TOKENVAULT_CONFIG"], self.mounts)
        config_path.parent.mkdir(parents=True)
        shutil.copy(made.config_path, config_path)
        if tls:
            shutil.copytree(directory / "made" / "tls", config_path.parent / "tls")
        secret = self._mapped(container["TOKENVAULT_SECRET_FILE"], self.mounts)
        secret.parent.mkdir(parents=True)
        shutil.copy(made.secret_path, secret)
        secret.chmod(0o400)
        (directory / "made" / "secret").unlink()  # the file named in cluster.toml is gone
        (directory / "logs").mkdir()
        self.ca_path = config_path.parent / "tls" / "ca.pem" if tls else None
        self._write_hosts()

    @staticmethod
    def _mapped(value: str, mounts: dict[str, Path]) -> Path:
        for container_path, host_path in mounts.items():
            if value == container_path or value.startswith(container_path + "/"):
                return Path(str(host_path) + value[len(container_path) :])
        raise AssertionError(f"{value}: no mount for that path")

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        for peer_id in self.layout.peer_ids:
            lines.append(f"{self.network.host(peer_id)} {self.layout.address_host(peer_id)}")
        for namespace in self.network.namespaces.values():
            hosts_dir = Path("/etc/netns") / namespace
            hosts_dir.mkdir(parents=True)
            self.hosts_dirs.append(hosts_dir)
            (hosts_dir / "hosts").write_text("\n".join(lines) + "\n")

    def environment(self, peer_id: str) -> dict[str, str]:
        """This process's environment (less any peer settings) plus the container's, its
        container paths mapped to the test's directories."""
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in PER_PEER_ENVIRONMENT_VARIABLES
        }
        mounts = {**self.mounts, DATA_MOUNT: self.directory / "data" / peer_id}
        for name, value in self.layout.environment(peer_id).items():
            environment[name] = str(self._mapped(value, mounts)) if value[:1] == "/" else value
        environment["PYTHONPATH"] = str(REPO_ROOT)
        return environment

    def in_namespace(self, peer_id: str, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.network.namespaces[peer_id], *command]

    def start(self, peer_id: str) -> None:
        log = open(self.directory / "logs" / f"{peer_id}.log", "ab")  # noqa: SIM115
        # The image's ENTRYPOINT and CMD: `tokenvault node`, no flags.
        command = self.in_namespace(peer_id, sys.executable, "-m", "tokenvault", "node")
        self.processes[peer_id] = subprocess.Popen(
            command,
            env=self.environment(peer_id),
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def healthcheck(self, peer_id: str) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, in the peer's namespace and environment."""
        command = self.in_namespace(peer_id, sys.executable, "-m", "tokenvault.healthcheck")
        return subprocess.run(
            command,
            env=self.environment(peer_id),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def wait_ready(self, peer_id: str) -> None:
        """The healthcheck passes, then /readyz answers 200 (asked by the peer's name)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        healthy = False
        while time.monotonic() < deadline:
            process = self.processes[peer_id]
            assert process.poll() is None, f"{peer_id} exited: {self.log(peer_id)[-2000:]}"
            if not healthy:
                healthy = self.healthcheck(peer_id).returncode == 0
            elif self._ready(peer_id):
                return
            time.sleep(0.1)
        raise AssertionError(f"{peer_id} not ready after {READY_TIMEOUT_S} s: {self.log(peer_id)}")

    def _ready(self, peer_id: str) -> bool:
        try:
            return self.request(peer_id, "GET", "/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def request(self, peer_id: str, method: str, path: str, body: Any = None) -> httpx.Response:
        """From the test's namespace, to the peer's address, its certificate checked for its
        name (as a client in the peers' network would see it); as alice when there is a body."""
        scheme = "https" if self.tls else "http"
        verify: Any = True if self.ca_path is None else client_context(self.ca_path)
        url = f"{scheme}://{self.network.host(peer_id)}:{PORT}{path}"
        headers = {"Authorization": f"Bearer {self.keys['owners']['alice']}"}
        name = self.layout.address_host(peer_id)
        with httpx.Client(verify=verify, timeout=10.0) as client:
            return client.request(
                method, url, json=body, headers=headers, extensions={"sni_hostname": name}
            )

    def cli(self, in_peer: str, *arguments: str, url_peer: str) -> Any:
        """The CLI as alice from `in_peer`'s namespace, to `url_peer` by its name."""
        scheme = "https" if self.tls else "http"
        cacert = [] if self.ca_path is None else ["--cacert", str(self.ca_path)]
        command = self.in_namespace(
            in_peer, sys.executable, "-m", "tokenvault", *arguments,
            "--url", f"{scheme}://{self.layout.address_host(url_peer)}:{PORT}", *cacert,
        )  # fmt: skip
        environment = dict(os.environ, TOKENVAULT_KEY=self.keys["owners"]["alice"])
        completed = subprocess.run(
            command, env=environment, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)

    def log(self, peer_id: str) -> str:
        return (self.directory / "logs" / f"{peer_id}.log").read_text(errors="replace")

    def log_events(self, peer_id: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log(peer_id).splitlines() if line.startswith("{")]

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        for hosts_dir in self.hosts_dirs:
            shutil.rmtree(hosts_dir, ignore_errors=True)


@contextlib.contextmanager
def container_like_peers(
    directory: Path, layout: Layout, *, tls: bool
) -> Iterator[ContainerLikePeers]:
    problem = netns_problem()
    if problem:
        pytest.skip(problem)
    network = Network(list(layout.peer_ids))
    network.create()
    peers: ContainerLikePeers | None = None
    try:
        peers = ContainerLikePeers(directory, network, layout, tls=tls)
        yield peers
    finally:
        try:
            if peers is not None:
                peers.close()
        finally:
            network.close()


def _serve_by_name_and_stop_on_sigterm(peers: ContainerLikePeers) -> None:
    first, second, third = peers.layout.peer_ids
    for peer_id in peers.layout.peer_ids:
        peers.start(peer_id)
    for peer_id in peers.layout.peer_ids:
        peers.wait_ready(peer_id)
    for peer_id in peers.layout.peer_ids:
        serving = [e for e in peers.log_events(peer_id) if e.get("event") == "peer_serving"]
        assert serving[-1]["address"] == f"{peers.layout.address_host(peer_id)}:{PORT}"
        assert serving[-1]["listen"] == f"0.0.0.0:{PORT}"

    # Tokenize through the second peer, by name from the first's namespace; detokenize through
    # the third from its own.
    tokenized = peers.cli(first, "tokenize", "--field", "ssn", "123-45-6789", url_peer=second)
    token = tokenized["records"][0]["ssn"]
    assert token.startswith("tok_")
    detokenized = peers.cli(third, "detokenize", token, url_peer=third)
    assert "123-45-6789" in json.dumps(detokenized)
    assert peers.healthcheck(second).stdout.startswith(f"healthy: peer {second}")

    # SIGTERM: each exits 0, promptly, having said so.
    for peer_id in peers.layout.peer_ids:
        process = peers.processes[peer_id]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        stopped_s = time.monotonic() - started
        assert code == 0, peers.log(peer_id)[-2000:]
        assert stopped_s < SIGTERM_EXIT_MAX_S, f"{peer_id} took {stopped_s:.1f} s"
        stops = [e for e in peers.log_events(peer_id) if e.get("event") == "peer_stop"]
        assert stops and stops[-1]["signal"] == "SIGTERM"
    unhealthy = peers.healthcheck(first)
    assert unhealthy.returncode == 1 and unhealthy.stdout.startswith("unhealthy:")

    # Restarted, every peer serves the same data: a token from before reads back.
    for peer_id in peers.layout.peer_ids:
        peers.start(peer_id)
    for peer_id in peers.layout.peer_ids:
        peers.wait_ready(peer_id)
    for peer_id in peers.layout.peer_ids:
        again = peers.request(peer_id, "POST", "/v1/detokenize", {"tokens": [token]})
        assert again.status_code == 200 and "123-45-6789" in again.text, again.text
    records = {"records": [{"ssn": "123-45-6789"}]}
    retokenized = peers.request(first, "POST", "/v1/tokenize", records)
    assert retokenized.json()["records"][0]["ssn"] == token


def test_peers_configured_as_the_compose_services_serve_by_name_and_stop_on_sigterm(
    tmp_path: Path, tls_mode: bool
) -> None:
    with container_like_peers(tmp_path, COMPOSE, tls=tls_mode) as peers:
        _serve_by_name_and_stop_on_sigterm(peers)


def test_peers_configured_as_the_statefulset_pods_serve_by_name_and_stop_on_sigterm(
    tmp_path: Path,
) -> None:
    """Plain HTTP, as the manifests ship: ids are the pods' names, addresses under the
    headless Service."""
    with container_like_peers(tmp_path, KUBERNETES, tls=False) as peers:
        _serve_by_name_and_stop_on_sigterm(peers)
