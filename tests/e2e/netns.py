"""Real network faults for end-to-end tests: every peer in a network namespace of its own.

Layout (all names carry a tag made of this process's id and random bits, so parallel or
leftover runs never collide):

    root namespace (the test process)          "tv<tag>-br" namespace          "tv<tag>-n1" ...
    tv<tag>c  10.213.K.254/24  <--veth-->  c ─┐                             eth0 10.213.K.1/24
                                              br0 (bridge) ── h1 <--veth--> (peer n1 serves here)
                                                           ── h2 <--veth--> eth0 10.213.K.2/24 ...

- The bridge lives in a namespace of its own, so nothing in the root namespace forwards or
  filters peer traffic; the root namespace gets one veth end with the client address and the
  connected route of 10.213.K.0/24, where K is picked (under a file lock) among /24s no
  interface or route of the root namespace uses yet.
- Each peer runs as `ip netns exec <ns> python -m tokenvault node ...`; `ip netns exec` execs,
  so the process id the harness holds is the peer's own (kill/pause/resume signal it directly).
- Faults are routes and rules inside the peers' namespaces only, never in the root namespace:
  `partition(a, b)` adds a blackhole route for b's address in a's namespace and for a's in b's
  (connects fail at once, packets of open connections vanish); `isolate(p)` partitions p from
  every other peer (the test client still reaches it unless `from_client=True`);
  `one_way(a, b)` adds, in a's namespace only, a blackhole rule for TCP to b's serving port:
  every request a sends to b is lost, while b's requests to a (whose answers go to b's
  ephemeral ports) still get through. Cuts are counted, so overlapping faults heal correctly.
- `close()` stops every peer process (by pid), then deletes the namespaces and the root veth,
  and is safe to call after any failure, even half-way through `create()`.

No traffic ever leaves loopback and the namespaces and veths made here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.e2e.harness import Cluster
from tokenvault.cluster_init import InitPeer, init_cluster, renew_peer_certificates
from tokenvault.config import load_config

SUBNET_PREFIX = "10.213"
CLIENT_HOST = 254
PEER_PORT_BASE = 7400  # peer i serves on PEER_PORT_BASE + i of its own address
COMMAND_TIMEOUT_S = 10.0
LOCK_PATH = Path("/tmp/tokenvault-e2e-netns.lock")
REQUIRE_ENV = "TOKENVAULT_E2E_REQUIRE_NETNS"

_problem_cache: list[str] = []


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    command = ["ip", *args] if namespace is None else ["ip", "-n", namespace, *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def netns_problem() -> str:
    """Why network namespaces cannot be used here, or "" when they can (checked once)."""
    if _problem_cache:
        return _problem_cache[0]
    problem = ""
    if not sys.platform.startswith("linux"):
        problem = "network namespaces need Linux"
    elif shutil.which("ip") is None:
        problem = "the `ip` command (iproute2) is not installed"
    elif os.geteuid() != 0:
        problem = "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    else:
        probe = f"tv{os.getpid():x}{secrets.token_hex(2)}-probe"
        try:
            _ip("netns", "add", probe)
            _ip("link", "add", "p0", "type", "veth", "peer", "name", "p1", namespace=probe)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            problem = f"cannot create a network namespace with a veth pair: {error}"
        finally:
            _ip("netns", "del", probe, check=False)
    _problem_cache.append(problem)
    return problem


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _subnets_in_use() -> set[int]:
    text = _ip("-4", "-o", "addr", "show") + _ip("-4", "route", "show", "table", "all")
    prefix = re.escape(SUBNET_PREFIX)
    return {int(k) for k in re.findall(rf"\b{prefix}\.(\d+)\.", text)}


class Network:
    """Namespaces, a bridge and veths for a set of peers, plus the faults between them."""

    def __init__(self, peer_ids: Sequence[str]) -> None:
        self.tag = f"{os.getpid() % 0xFFFFF:05x}{secrets.token_hex(1)}"
        self.peer_ids = list(peer_ids)
        self.bridge_ns = f"tv{self.tag}-br"
        self.namespaces = {p: f"tv{self.tag}-{p}" for p in self.peer_ids}
        self.client_link = f"tv{self.tag}c"
        self.subnet = -1
        self._created_namespaces: list[str] = []
        self._client_link_created = False
        self._blackholes: Counter[tuple[str, str]] = Counter()  # (in peer, to address)
        self._rules: Counter[tuple[str, str]] = Counter()  # (in peer, to peer)

    # -- layout --------------------------------------------------------------------------------

    def host(self, peer_id: str) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.{self.peer_ids.index(peer_id) + 1}"

    def port(self, peer_id: str) -> int:
        return PEER_PORT_BASE + self.peer_ids.index(peer_id) + 1

    @property
    def client_host(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.{CLIENT_HOST}"

    def create(self) -> None:
        """Build everything; on any failure what was built is removed again."""
        try:
            self._add_namespace(self.bridge_ns)
            _ip("link", "set", "lo", "up", namespace=self.bridge_ns)
            _ip("link", "add", "br0", "type", "bridge", namespace=self.bridge_ns)
            _ip("link", "set", "br0", "up", namespace=self.bridge_ns)
            for index, peer in enumerate(self.peer_ids, start=1):
                namespace = self.namespaces[peer]
                self._add_namespace(namespace)
                _ip("link", "set", "lo", "up", namespace=namespace)
                _ip(
                    "link", "add", f"h{index}", "netns", self.bridge_ns,
                    "type", "veth", "peer", "name", "eth0", "netns", namespace,
                )  # fmt: skip
                self._attach(f"h{index}")
            with _subnet_lock():
                used = _subnets_in_use()
                free = [k for k in range(20, 250) if k not in used]
                if not free:
                    raise RuntimeError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")
                self.subnet = free[(os.getpid() + secrets.randbelow(1000)) % len(free)]
                _ip(
                    "link", "add", self.client_link,
                    "type", "veth", "peer", "name", "c", "netns", self.bridge_ns,
                )  # fmt: skip
                self._client_link_created = True
                self._attach("c")
                _ip("addr", "add", f"{self.client_host}/24", "dev", self.client_link)
                _ip("link", "set", self.client_link, "up")
            for peer in self.peer_ids:
                namespace = self.namespaces[peer]
                _ip("addr", "add", f"{self.host(peer)}/24", "dev", "eth0", namespace=namespace)
                _ip("link", "set", "eth0", "up", namespace=namespace)
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created_namespaces.append(name)

    def _attach(self, link: str) -> None:
        _ip("link", "set", link, "master", "br0", namespace=self.bridge_ns)
        _ip("link", "set", link, "up", namespace=self.bridge_ns)

    def close(self) -> None:
        """Delete the namespaces (and with them every veth) and the root veth. Idempotent."""
        if self._client_link_created:
            _ip("link", "del", self.client_link, check=False)
            self._client_link_created = False
        while self._created_namespaces:
            _ip("netns", "del", self._created_namespaces.pop(), check=False)
        self._blackholes.clear()
        self._rules.clear()

    # -- faults --------------------------------------------------------------------------------

    def _blackhole(self, in_peer: str, address: str, add: bool) -> None:
        key = (in_peer, address)
        namespace = self.namespaces[in_peer]
        if add:
            self._blackholes[key] += 1
            if self._blackholes[key] == 1:
                _ip("route", "add", "blackhole", f"{address}/32", namespace=namespace)
        elif self._blackholes[key] > 0:
            self._blackholes[key] -= 1
            if self._blackholes[key] == 0:
                del self._blackholes[key]
                _ip("route", "del", "blackhole", f"{address}/32", namespace=namespace)

    def partition(self, a: str, b: str) -> None:
        """Two-way cut between peers a and b."""
        self._blackhole(a, self.host(b), add=True)
        self._blackhole(b, self.host(a), add=True)

    def heal(self, a: str, b: str) -> None:
        self._blackhole(a, self.host(b), add=False)
        self._blackhole(b, self.host(a), add=False)

    def isolate(self, peer: str, *, from_client: bool = False) -> None:
        """Cut peer off from every other peer (and from the test client if from_client)."""
        for other in self.peer_ids:
            if other != peer:
                self.partition(peer, other)
        if from_client:
            self._blackhole(peer, self.client_host, add=True)

    def rejoin(self, peer: str, *, from_client: bool = False) -> None:
        for other in self.peer_ids:
            if other != peer:
                self.heal(peer, other)
        if from_client:
            self._blackhole(peer, self.client_host, add=False)

    def _one_way_rule(self, action: str, a: str, b: str) -> None:
        _ip(
            "rule", action, "to", f"{self.host(b)}/32",
            "ipproto", "tcp", "dport", str(self.port(b)), "blackhole",
            namespace=self.namespaces[a],
        )  # fmt: skip

    def one_way(self, a: str, b: str) -> None:
        """a's requests to b are lost; b's requests to a (and their answers) still arrive."""
        self._rules[(a, b)] += 1
        if self._rules[(a, b)] == 1:
            self._one_way_rule("add", a, b)

    def heal_one_way(self, a: str, b: str) -> None:
        if self._rules[(a, b)] > 0:
            self._rules[(a, b)] -= 1
            if self._rules[(a, b)] == 0:
                del self._rules[(a, b)]
                self._one_way_rule("del", a, b)

    def heal_all(self) -> None:
        for in_peer, address in list(self._blackholes):
            while self._blackholes.get((in_peer, address), 0) > 0:
                self._blackhole(in_peer, address, add=False)
        for a, b in list(self._rules):
            while self._rules.get((a, b), 0) > 0:
                self.heal_one_way(a, b)

    def describe(self) -> str:
        """Routes and rules of every peer namespace, for failure messages."""
        parts = []
        for peer, namespace in self.namespaces.items():
            routes = _ip("route", "show", namespace=namespace, check=False).strip()
            rules = _ip("rule", "show", namespace=namespace, check=False).strip()
            parts.append(f"{peer} ({namespace}):\n{routes}\n{rules}")
        return "\n".join(parts)


class NetnsCluster(Cluster):
    """The loopback Cluster's API, with every peer in its own namespace of `network`."""

    def __init__(
        self,
        directory: Path,
        network: Network,
        *,
        owners: tuple[str, ...] = ("alice", "bob"),
        tls: bool = False,
    ) -> None:
        self.directory = directory
        self.network = network
        nodes = len(network.peer_ids)
        made = init_cluster(
            directory, nodes=nodes, base_port=PEER_PORT_BASE, owners=owners, tls=tls
        )
        assert [p.id for p in made.peers] == network.peer_ids, "peer ids must be n1..nN"
        # init writes 127.0.0.1:<port> for every peer; each peer serves on its own address.
        config = made.config_path.read_text()
        peers = []
        for peer in made.peers:
            address = f"{network.host(peer.id)}:{network.port(peer.id)}"
            old = f"address = {json.dumps(peer.address)}"
            assert config.count(old) == 1, old
            config = config.replace(old, f"address = {json.dumps(address)}")
            peers.append(InitPeer(id=peer.id, address=address, data_dir=peer.data_dir))
        made.config_path.write_text(config)
        if tls:  # certificates that name each peer's own address, as clients check
            renew_peer_certificates(load_config(made.config_path))
        self._set_tls(tls)
        self.init = dataclasses.replace(made, peers=tuple(peers))
        keys = json.loads((directory / "keys.json").read_text())
        self.admin_key = keys["admin"]
        self.owner_keys = keys["owners"]
        self.peer_ids = [p.id for p in self.init.peers]
        self._addresses = {p.id: p.address for p in self.init.peers}
        self._data_dirs = {p.id: p.data_dir for p in self.init.peers}
        self._processes = {}
        (directory / "logs").mkdir(exist_ok=True)

    def start(self, peer_id: str, config_path: Path | None = None) -> None:
        assert peer_id not in self._processes or self._processes[peer_id].poll() is not None
        log = open(self.directory / "logs" / f"{peer_id}.log", "ab")  # noqa: SIM115
        command = [
            "ip", "netns", "exec", self.network.namespaces[peer_id],
            sys.executable, "-m", "tokenvault", "node",
            "--config", str(config_path or self.init.config_path), "--id", peer_id,
        ]  # fmt: skip
        self._processes[peer_id] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()

    def is_running(self, peer_id: str) -> bool:
        process = self._processes.get(peer_id)
        return process is not None and process.poll() is None

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.network.close()


@contextlib.contextmanager
def netns_cluster(
    directory: Path,
    *,
    nodes: int = 3,
    owners: tuple[str, ...] = ("alice", "bob"),
    tls: bool = False,
) -> Iterator[NetnsCluster]:
    """A started cluster in namespaces; everything stopped and removed on the way out."""
    network = Network([f"n{i}" for i in range(1, nodes + 1)])
    network.create()
    try:
        cluster = NetnsCluster(directory, network, owners=owners, tls=tls)
    except BaseException:
        network.close()
        raise
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()
