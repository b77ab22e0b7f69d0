"""Which peer a client command talks to, and with which API key.

Rules:
- --url and --key win; --dir fills what they leave out: its first peer's URL, and from its
  keys.json the key of --owner NAME, of --admin, or else the command's default (the first
  owner's, or the admin key for `status`); TOKENVAULT_KEY is the last resort for the key.
- HTTPS: --cacert names the CA to trust; else a --dir whose cluster.toml has TLS on gives its
  CA (and https:// for its first peer). A bare host:port gets https:// when a CA is known, else
  http://. An https:// URL without any CA is checked against the system's CAs.
- Without a URL or a key, or with a key that is not printable ASCII, the command stops with
  exit code 2 before anything is sent.
- A Target never shows its key: not in its repr, not in any message.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from tokenvault.cli.cluster_files import (
    cluster_client_context,
    load_cluster_config,
    load_cluster_keys,
)
from tokenvault.cli.exits import EXIT_USAGE, CliError
from tokenvault.cluster_init import CONFIG_NAME, KEYS_NAME

KEY_ENVIRONMENT_VARIABLE = "TOKENVAULT_KEY"


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # scheme, host and port, without a trailing slash
    key: str
    ca_path: Path | None = None  # the CA that signs the peers' certificates (HTTPS)

    def __repr__(self) -> str:
        return f"Target(url={self.url!r}, ca_path={self.ca_path!r})"

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx checks the peer's certificate with: the cluster CA, else the system's."""
        return True if self.ca_path is None else cluster_client_context(self.ca_path)

    def at(self, address: str) -> Target:
        """The same key, scheme and CA, for the peer at `address` (host:port)."""
        scheme = self.url.partition("://")[0]
        return Target(url=f"{scheme}://{address}", key=self.key, ca_path=self.ca_path)


def target_of(args: argparse.Namespace, *, admin_by_default: bool = False) -> Target:
    """The peer URL and API key: from --url/--key, else from the cluster in --dir."""
    url: str | None = args.url
    key: str | None = args.key
    ca_path: Path | None = args.cacert
    directory: Path | None = args.dir
    if directory is not None:
        if url is None or ca_path is None:
            config = load_cluster_config(directory / CONFIG_NAME)
            if ca_path is None and config.tls is not None:
                ca_path = config.tls.ca_path
            if url is None:
                url = config.peers[0].address
        if key is None:
            key = _key_from_dir(directory, args, admin_by_default=admin_by_default)
    if key is None:
        key = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    if url is None or not key:
        raise CliError(
            f"say where and as whom: --url and --key (or ${KEY_ENVIRONMENT_VARIABLE}),"
            " or --dir of a cluster made by init",
            EXIT_USAGE,
        )
    if not key.isascii() or not key.isprintable():
        raise CliError("the API key must be printable ASCII", EXIT_USAGE)
    if "://" not in url:
        url = f"{'http' if ca_path is None else 'https'}://{url}"
    return Target(url=url.rstrip("/"), key=key, ca_path=ca_path)


def _key_from_dir(directory: Path, args: argparse.Namespace, *, admin_by_default: bool) -> str:
    keys = load_cluster_keys(directory / KEYS_NAME)
    owner: str | None = args.owner
    if args.admin or (owner is None and admin_by_default):
        return keys.admin
    if owner is None:
        if not keys.owners:
            raise CliError(f"{directory / KEYS_NAME} lists no owner; use --admin", EXIT_USAGE)
        return next(iter(keys.owners.values()))
    if owner not in keys.owners:
        raise CliError(f"no key for owner {owner!r} in {directory / KEYS_NAME}", EXIT_USAGE)
    return keys.owners[owner]
