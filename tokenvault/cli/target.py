"""Which peers a client command talks to, with which API key, and whether it says so (-v).

Rules:
- --url and --key win; --dir fills what they leave out: every peer of its cluster.toml, in its
  order (the client library tries them in turn), and from its keys.json the key of --owner
  NAME, of --admin, or else the command's default (the first owner's, or the admin key for
  `status`); TOKENVAULT_KEY is the last resort for the key. A --url given with --dir is the one
  peer asked.
- HTTPS: --cacert names the CA to trust; else a --dir whose cluster.toml has TLS on gives its
  CA (and https:// for its peers). A bare host:port gets https:// when a CA is known, else
  http://. An https:// URL without any CA is checked against the system's CAs.
- Without a URL or a key, or with a key that is not printable ASCII, the command stops with
  exit code 2 before anything is sent; so does a --dir whose files cannot be read.
- A Target never shows its key: not in its repr, not in any message.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from tokenvault.cli.cluster_files import (
    cluster_client_context,
    load_cluster_config,
    load_cluster_keys,
)
from tokenvault.cli.exits import EXIT_USAGE, CliError
from tokenvault.client.cluster_dir import chosen_key
from tokenvault.client.exchange import peer_url
from tokenvault.cluster_init import CONFIG_NAME, KEYS_NAME
from tokenvault.config import ClusterConfig, ConfigError, OwnerConfig
from tokenvault.tokens import hash_api_key

KEY_ENVIRONMENT_VARIABLE = "TOKENVAULT_KEY"


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # the first peer's: scheme, host and port, without a trailing slash
    key: str
    ca_path: Path | None = None  # the CA that signs the peers' certificates (HTTPS)
    others: tuple[str, ...] = ()  # the other peers' URLs, tried after `url` in this order
    config: ClusterConfig | None = field(default=None, compare=False)  # --dir's cluster.toml
    verbose: bool = False  # -v: say which peer answered, and which attempts failed

    def __repr__(self) -> str:
        return f"Target(urls={self.urls!r}, ca_path={self.ca_path!r})"

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.others)

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx checks the peer's certificate with: the cluster CA, else the system's."""
        return True if self.ca_path is None else cluster_client_context(self.ca_path)

    def at(self, address: str) -> Target:
        """The same key, scheme and CA, for the one peer at `address` (host:port)."""
        scheme = self.url.partition("://")[0]
        return Target(
            url=f"{scheme}://{address}", key=self.key, ca_path=self.ca_path, verbose=self.verbose
        )

    def owner(self) -> OwnerConfig | None:
        """The owner of --dir's cluster.toml whose key this is (None: no --dir, or not one)."""
        if self.config is None:
            return None
        hashed = hash_api_key(self.key)
        return next((o for o in self.config.owners if o.key_sha256 == hashed), None)


def target_of(args: argparse.Namespace, *, admin_by_default: bool = False) -> Target:
    """The peer URLs and API key: from --url/--key, else from the cluster in --dir."""
    url: str | None = args.url
    key: str | None = args.key
    ca_path: Path | None = args.cacert
    directory: Path | None = args.dir
    config: ClusterConfig | None = None
    addresses: list[str] = [] if url is None else [url]
    if directory is not None:
        config = load_cluster_config(directory / CONFIG_NAME)
        if ca_path is None and config.tls is not None:
            ca_path = config.tls.ca_path
        if url is None:
            addresses = [peer.address for peer in config.peers]
        if key is None:
            key = _key_from_dir(directory, args, admin_by_default=admin_by_default)
    if key is None:
        key = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    if not addresses or not key:
        raise CliError(
            f"say where and as whom: --url and --key (or ${KEY_ENVIRONMENT_VARIABLE}),"
            " or --dir of a cluster made by init",
            EXIT_USAGE,
        )
    if not key.isascii() or not key.isprintable():
        raise CliError("the API key must be printable ASCII", EXIT_USAGE)
    urls = [peer_url(address, https=ca_path is not None) for address in addresses]
    return Target(
        url=urls[0],
        key=key,
        ca_path=ca_path,
        others=tuple(urls[1:]),
        config=config,
        verbose=bool(getattr(args, "verbose", False)),
    )


def _key_from_dir(directory: Path, args: argparse.Namespace, *, admin_by_default: bool) -> str:
    owner: str | None = args.owner
    admin = bool(args.admin or (owner is None and admin_by_default))
    keys_path = directory / KEYS_NAME
    try:
        return chosen_key(load_cluster_keys(keys_path), keys_path, owner, admin=admin)
    except ConfigError as error:
        hint = "; use --admin" if owner is None and not admin else ""
        raise CliError(f"{error}{hint}", EXIT_USAGE) from error
