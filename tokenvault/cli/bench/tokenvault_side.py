"""The tokenvault side of `tokenvault bench`: a fresh 3-peer cluster of its own, or a running
cluster named by --url/--key or --dir, and the tokens that detokenize reads.

Rules:
- A fresh cluster is `init --nodes 3 --owners alice` (N=3, W=2, R=2) on free loopback ports in
  the work directory, each peer its own process (as `up` starts them), ready once every peer
  answers /readyz. Its peers are stopped by PID on every way out, whatever happened.
- A running cluster is only used: its members' URLs come from --dir's cluster.toml, or from
  the peer's GET /v1/ring; the bench stops none of its processes and cannot see their CPU.
- Tokens for detokenize are made through the API in 100-record requests of fresh values
  (20,000 by default), once per cluster, and written one per line for the load generators.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tokenvault.cli.bench.processes import check_stop, free_port_block
from tokenvault.cli.cluster_files import cluster_client_context, load_cluster_config
from tokenvault.cli.exits import CliError
from tokenvault.cli.peer_processes import (
    PeerChild,
    StopSignals,
    start_peer,
    stop_peers,
    wait_until_healthy,
)
from tokenvault.cli.target import target_of
from tokenvault.cluster_init import CONFIG_NAME, init_cluster, load_keys

FRESH_CLUSTER_PEERS = 3
FRESH_CLUSTER_OWNER = "alice"
DETOKENIZE_TOKEN_COUNT = 20_000
TOKENS_PER_REQUEST = 100
REQUEST_TIMEOUT_S = 30.0


@dataclass(slots=True, kw_only=True)
class TokenvaultCluster:
    urls: list[str]  # every member's; the first takes the one-endpoint workloads
    key: str
    ca_path: Path | None = None
    server_pids: list[int] = field(default_factory=list)  # empty for a cluster not ours
    tokens_path: Path | None = None  # made on first need

    def __repr__(self) -> str:  # never the key
        return f"TokenvaultCluster(urls={self.urls!r}, server_pids={self.server_pids!r})"

    def environment(self) -> dict[str, str]:
        """What the load generators read: the owner's key, the tokens and the CA."""
        environment = {"KEY": self.key}
        if self.tokens_path is not None:
            environment["TOKENS"] = str(self.tokens_path)
        if self.ca_path is not None:
            environment["BENCH_CACERT"] = str(self.ca_path)
        return environment


@contextlib.contextmanager
def fresh_cluster(directory: Path, stop: StopSignals) -> Iterator[TokenvaultCluster]:
    """A new 3-peer cluster in `directory`, ready; every peer stopped on the way out."""
    result = init_cluster(
        directory,
        nodes=FRESH_CLUSTER_PEERS,
        base_port=free_port_block(FRESH_CLUSTER_PEERS),
        owners=(FRESH_CLUSTER_OWNER,),
    )
    config = load_cluster_config(result.config_path)
    logs_dir = directory / "logs"
    logs_dir.mkdir(mode=0o700, exist_ok=True)
    children: list[PeerChild] = []
    try:
        for peer in config.peers:
            children.append(start_peer(peer, result.config_path.resolve(), logs_dir))
        if not wait_until_healthy(children, stop, logs_dir):
            raise CliError("the fresh tokenvault cluster did not become ready")
        yield TokenvaultCluster(
            urls=[f"http://{peer.address}" for peer in config.peers],
            key=load_keys(result.keys_path).owners[FRESH_CLUSTER_OWNER],
            server_pids=[child.process.pid for child in children],
        )
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the report alone
            stop_peers(children, stop)


def running_cluster(args: argparse.Namespace) -> TokenvaultCluster:
    """The cluster that --url/--key or --dir name, with every member's URL."""
    target = target_of(args)
    scheme = target.url.partition("://")[0]
    if args.dir is not None and args.url is None:
        config = load_cluster_config(args.dir / CONFIG_NAME)
        addresses = [peer.address for peer in config.peers]
    else:
        try:
            answer = httpx.get(
                f"{target.url}/v1/ring",
                headers={"authorization": f"Bearer {target.key}"},
                verify=target.verify(),
                timeout=REQUEST_TIMEOUT_S,
                trust_env=False,
            )
            answer.raise_for_status()
            addresses = [str(peer["address"]) for peer in answer.json()["peers"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            raise CliError(f"cannot read the members from {target.url}/v1/ring: {error}") from error
    others = [f"{scheme}://{a}" for a in addresses if f"{scheme}://{a}" != target.url]
    return TokenvaultCluster(urls=[target.url, *others], key=target.key, ca_path=target.ca_path)


def make_tokens(cluster: TokenvaultCluster, path: Path, stop: StopSignals) -> None:
    """Tokenizes DETOKENIZE_TOKEN_COUNT fresh values through the API; their tokens go to path."""
    run = secrets.token_hex(6)
    url = cluster.urls[1 % len(cluster.urls)]  # as the reference method: not the measured peer
    verify = True if cluster.ca_path is None else cluster_client_context(cluster.ca_path)
    tokens: list[str] = []
    headers = {"authorization": f"Bearer {cluster.key}"}
    with httpx.Client(
        headers=headers, timeout=REQUEST_TIMEOUT_S, verify=verify, trust_env=False
    ) as client:
        for start in range(0, DETOKENIZE_TOKEN_COUNT, TOKENS_PER_REQUEST):
            check_stop(stop)
            records = [{"ssn": f"d-{run}-{start + i}"} for i in range(TOKENS_PER_REQUEST)]
            try:
                answer = client.post(f"{url}/v1/tokenize", json={"records": records})
                answer.raise_for_status()
                tokens += [str(record["ssn"]) for record in answer.json()["records"]]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
                raise CliError(f"making tokens for detokenize failed: {error}") from error
    path.write_text("\n".join(tokens) + "\n", encoding="ascii")
    cluster.tokens_path = path
