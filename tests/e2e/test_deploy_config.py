"""End to end: three peers configured exactly as deploy/compose.yaml configures its containers,
as real processes, since containers cannot run here.

Each peer runs in a network namespace of its own (netns.py) whose /etc/hosts (`ip netns exec`
bind-mounts /etc/netns/<namespace>/hosts over it) names the peers n1, n2, n3, as Docker's DNS
does on a compose network. cluster.toml addresses the peers by those names, all on port 7600;
each peer binds 0.0.0.0:7600 in its namespace. A peer is started as the image starts it,
`tokenvault node` without a flag, with the environment of its compose service; the container
paths of that environment (/etc/tokenvault, /run/secrets, /var/lib/tokenvault) are mapped to
directories of the test, the secret being a file apart from the configuration. The healthcheck
is the image's HEALTHCHECK command, run in the peer's namespace. Clients use the CLI in a
peer's namespace, by name (with TLS: certificates naming n1..n3, checked by the client).
Then every peer gets SIGTERM: each exits 0 within SIGTERM_EXIT_MAX_S, and after a restart the
data is intact.
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
from collections.abc import Iterator
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
PEER_IDS = ["n1", "n2", "n3"]
PORT = 7600
READY_TIMEOUT_S = 30.0
SIGTERM_EXIT_MAX_S = 5.0  # "exits 0 within a few seconds"; the grace periods are 30 s
COMMAND_TIMEOUT_S = 30.0


def _compose_environment(service: str) -> dict[str, str]:
    compose = yaml.safe_load(COMPOSE_PATH.read_text())
    environment: dict[str, Any] = compose["services"][service]["environment"]
    return {name: str(value) for name, value in environment.items()}


class ContainerLikePeers:
    """The three peers, their namespaces' /etc/hosts, their 'container' directories."""

    def __init__(self, directory: Path, network: Network, *, tls: bool) -> None:
        self.directory = directory
        self.network = network
        self.tls = tls
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.hosts_dirs: list[Path] = []
        made = init_cluster(directory / "made", nodes=3, base_port=PORT, tls=tls)
        # The documented step: addresses by service name, every peer on the same port.
        config = made.config_path.read_text()
        for peer in made.peers:
            old = f"address = {json.dumps(peer.address)}"
            assert config.count(old) == 1, old
            config = config.replace(old, f'address = "{peer.id}:{PORT}"')
        made.config_path.write_text(config)
        if tls:  # certificates naming n1..n3, as `renew-certs` makes them after that edit
            renew_peer_certificates(load_config(made.config_path))
        self.keys = json.loads((directory / "made" / "keys.json").read_text())
        # What the containers mount: the configuration (with tls/), the secret apart, the data.
        self.mounts = {
            "/etc/tokenvault": directory / "etc-tokenvault",
            "/run/secrets": directory / "run-secrets",
        }
        self.mounts["/etc/tokenvault"].mkdir()
        shutil.copy(made.config_path, self.mounts["/etc/tokenvault"] / "cluster.toml")
        if tls:
            shutil.copytree(directory / "made" / "tls", self.mounts["/etc/tokenvault"] / "tls")
        self.mounts["/run/secrets"].mkdir()
        secret = self.mounts["/run/secrets"] / "tokenvault_secret"
        shutil.copy(made.secret_path, secret)
        secret.chmod(0o400)
        (directory / "made" / "secret").unlink()  # the file named in cluster.toml is gone
        (directory / "logs").mkdir()
        self.ca_path = self.mounts["/etc/tokenvault"] / "tls" / "ca.pem" if tls else None
        self._write_hosts()

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{self.network.host(p)} {p}" for p in PEER_IDS]
        for namespace in self.network.namespaces.values():
            hosts_dir = Path("/etc/netns") / namespace
            hosts_dir.mkdir(parents=True)
            self.hosts_dirs.append(hosts_dir)
            (hosts_dir / "hosts").write_text("\n".join(lines) + "\n")

    def environment(self, peer_id: str) -> dict[str, str]:
        """This process's environment (less any peer settings) plus the compose service's,
        its container paths mapped to the test's directories."""
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in PER_PEER_ENVIRONMENT_VARIABLES
        }
        data_dir = self.directory / "data" / peer_id
        mounts = {**self.mounts, "/var/lib/tokenvault": data_dir}
        for name, value in _compose_environment(peer_id).items():
            for container_path, host_path in mounts.items():
                if value == container_path or value.startswith(container_path + "/"):
                    value = str(host_path) + value[len(container_path) :]
                    break
            else:
                assert not value.startswith("/"), f"{name}={value}: no mount for that path"
            environment[name] = value
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
        with httpx.Client(verify=verify, timeout=10.0) as client:
            return client.request(
                method, url, json=body, headers=headers, extensions={"sni_hostname": peer_id}
            )

    def cli(self, in_peer: str, *arguments: str, url_peer: str) -> Any:
        """The CLI as alice from `in_peer`'s namespace, to `url_peer` by its name."""
        scheme = "https" if self.tls else "http"
        cacert = [] if self.ca_path is None else ["--cacert", str(self.ca_path)]
        command = self.in_namespace(
            in_peer, sys.executable, "-m", "tokenvault", *arguments,
            "--url", f"{scheme}://{url_peer}:{PORT}", *cacert,
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
def container_like_peers(directory: Path, *, tls: bool) -> Iterator[ContainerLikePeers]:
    network = Network(PEER_IDS)
    network.create()
    peers: ContainerLikePeers | None = None
    try:
        peers = ContainerLikePeers(directory, network, tls=tls)
        yield peers
    finally:
        try:
            if peers is not None:
                peers.close()
        finally:
            network.close()


def test_peers_configured_as_the_containers_are_serve_by_name_and_stop_on_sigterm(
    tmp_path: Path, tls_mode: bool
) -> None:
    problem = netns_problem()
    if problem:
        pytest.skip(problem)
    with container_like_peers(tmp_path, tls=tls_mode) as peers:
        for peer_id in PEER_IDS:
            peers.start(peer_id)
        for peer_id in PEER_IDS:
            peers.wait_ready(peer_id)
        for peer_id in PEER_IDS:
            serving = [e for e in peers.log_events(peer_id) if e.get("event") == "peer_serving"]
            assert serving[-1]["address"] == f"{peer_id}:{PORT}"
            assert serving[-1]["listen"] == f"0.0.0.0:{PORT}"

        # Tokenize through n2, by name from n1's namespace; detokenize through n3 from n3's.
        tokenized = peers.cli("n1", "tokenize", "--field", "ssn", "123-45-6789", url_peer="n2")
        token = tokenized["records"][0]["ssn"]
        assert token.startswith("tok_")
        detokenized = peers.cli("n3", "detokenize", token, url_peer="n3")
        assert "123-45-6789" in json.dumps(detokenized)
        assert peers.healthcheck("n2").stdout.startswith("healthy: peer n2")

        # SIGTERM: each exits 0, promptly, having said so.
        for peer_id in PEER_IDS:
            process = peers.processes[peer_id]
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            stopped_s = time.monotonic() - started
            assert code == 0, peers.log(peer_id)[-2000:]
            assert stopped_s < SIGTERM_EXIT_MAX_S, f"{peer_id} took {stopped_s:.1f} s"
            stops = [e for e in peers.log_events(peer_id) if e.get("event") == "peer_stop"]
            assert stops and stops[-1]["signal"] == "SIGTERM"
        unhealthy = peers.healthcheck("n1")
        assert unhealthy.returncode == 1 and unhealthy.stdout.startswith("unhealthy:")

        # Restarted, every peer serves the same data: a token from before reads back.
        for peer_id in PEER_IDS:
            peers.start(peer_id)
        for peer_id in PEER_IDS:
            peers.wait_ready(peer_id)
        for peer_id in PEER_IDS:
            again = peers.request(peer_id, "POST", "/v1/detokenize", {"tokens": [token]})
            assert again.status_code == 200 and "123-45-6789" in again.text, again.text
        records = {"records": [{"ssn": "123-45-6789"}]}
        retokenized = peers.request("n1", "POST", "/v1/tokenize", records)
        assert retokenized.json()["records"][0]["ssn"] == token
