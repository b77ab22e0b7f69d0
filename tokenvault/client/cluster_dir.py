"""Where and as whom a client talks, read from a cluster directory made by `tokenvault init`.

Rules:
- The peers are every [[peer]] of cluster.toml, in its order; with TLS on ([tls] in
  cluster.toml) their URLs are https:// and the CA in its ca_file is the one trusted.
- The key comes from keys.json: `owner`'s, or the admin key with `admin=True`, or else the
  first owner's. A missing or invalid file, or an owner without a key, is a ConfigError naming
  the file, never a key.
- cluster.toml is read with the peers' own loader (config.load_config), so the directory must
  be one the peers could start from (its secret file included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tokenvault.cluster_init import CONFIG_NAME, KEYS_NAME, ClusterKeys, load_keys
from tokenvault.config import ClusterConfig, ConfigError, load_config

__all__ = ["ClusterAccess", "chosen_key", "cluster_access"]


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    config: ClusterConfig
    peers: tuple[str, ...]  # base URLs, in cluster.toml's order
    key: str
    ca_path: Path | None  # the cluster CA with TLS on

    def __repr__(self) -> str:
        return f"ClusterAccess(peers={self.peers!r}, ca_path={self.ca_path!r})"


def cluster_access(
    directory: str | os.PathLike[str], *, owner: str | None = None, admin: bool = False
) -> ClusterAccess:
    directory = Path(directory)
    config = load_config(directory / CONFIG_NAME)
    key = chosen_key(load_keys(directory / KEYS_NAME), directory / KEYS_NAME, owner, admin=admin)
    scheme = "http" if config.tls is None else "https"
    return ClusterAccess(
        config=config,
        peers=tuple(f"{scheme}://{peer.address}" for peer in config.peers),
        key=key,
        ca_path=None if config.tls is None else config.tls.ca_path,
    )


def chosen_key(keys: ClusterKeys, keys_path: Path, owner: str | None, *, admin: bool) -> str:
    """The admin key with `admin`, else `owner`'s, else the first owner's."""
    if admin:
        return keys.admin
    if owner is None:
        if not keys.owners:
            raise ConfigError(f"{keys_path} lists no owner")
        return next(iter(keys.owners.values()))
    if owner not in keys.owners:
        raise ConfigError(f"no key for owner {owner!r} in {keys_path}")
    return keys.owners[owner]
