"""The cluster configuration: one TOML file every peer reads, validated once at startup.

Rules:
- Parsed and checked once; the result is frozen and the hot path never re-reads it.
- A bad file is refused with a `ConfigError` whose message names the problem (never a secret).
- Paths inside the file are relative to the file. The secret file must hold 32+ bytes; the
  environment variable TOKENVAULT_SECRET_FILE, when set, names it instead of `[cluster]
  secret_file` (a path, relative to the working directory), so that in a container the secret
  can be mounted apart from the configuration and the data directory; `load_config`'s
  `secret_file` (the node's --secret-file) wins over both.
- A peer serves on its `address` unless `[[peer]] listen` names another host:port to bind (a
  container binds 0.0.0.0:7600 while the others reach it by name); peer_settings.py lets the
  command line and the environment override it and `data_dir` for the peer being started.
- Quorum sizes must be safe (see quorum_config): W + R > N and W > N / 2, N <= peers.
- `[tls]` (optional) names the cluster CA's certificate and each peer's certificate and key;
  `enabled = false` or no section means plain HTTP. The CA file must be readable here (every
  client and peer needs it); a peer's own certificate and key are checked when that peer starts
  (tls_certificates.py), since a machine holds only its own key.
- `cluster_fingerprint` hashes what every peer of one cluster must agree on (what places and
  tokenizes data): peers send it with every batch and refuse a batch that carries another.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenvault.quorum.messages import is_valid_owner_id
from tokenvault.quorum.quorum_config import QuorumConfig, quorum_problem

SECRET_BYTES_MIN = 32
PEER_PLACEHOLDER = "{peer}"  # in [tls] cert_file and key_file: the peer's id
TLS_CA_FILE_DEFAULT = "tls/ca.pem"
TLS_CERT_FILE_DEFAULT = "tls/{peer}.pem"
TLS_KEY_FILE_DEFAULT = "tls/{peer}.key"
_PEER_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConfigError(Exception):
    """The cluster configuration is missing or invalid."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    id: str
    host: str
    port: int
    data_dir: Path
    listen: tuple[str, int] | None = None  # (host, port) it binds, when not its address

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def listen_address(self) -> tuple[str, int]:
        """Where this peer's server binds: `listen` when set, else its address; an IPv6 host
        without its brackets, as a socket takes it."""
        host, port = self.listen if self.listen is not None else (self.host, self.port)
        return host.removeprefix("[").removesuffix("]"), port


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """[tls] with `enabled = true`: where the CA certificate and the peers' files are."""

    ca_path: Path
    cert_file: str  # relative to the configuration's directory; PEER_PLACEHOLDER is the id
    key_file: str
    base: Path  # the configuration's directory

    def cert_path(self, peer_id: str) -> Path:
        return self.base / self.cert_file.replace(PEER_PLACEHOLDER, peer_id)

    def key_path(self, peer_id: str) -> Path:
        return self.base / self.key_file.replace(PEER_PLACEHOLDER, peer_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerConfig:
    id: str
    key_sha256: str
    fields: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    path: Path
    name: str
    quorum: QuorumConfig
    vnodes_per_peer: int
    secret: bytes
    peers: tuple[PeerConfig, ...]
    owners: tuple[OwnerConfig, ...]
    admin_key_sha256: str
    anti_entropy_interval_s: float = 1.0  # 0 turns anti-entropy off (for measurements)
    transfer_rate_mb_s: float = 10.0  # what a peer's transfers may read, MB (10^6 bytes) a second
    tls: TlsConfig | None = None  # None: plain HTTP

    def peer(self, peer_id: str) -> PeerConfig:
        for peer in self.peers:
            if peer.id == peer_id:
                return peer
        raise ConfigError(f"no peer with id {peer_id!r} in {self.path}")

    def owner(self, owner_id: str) -> OwnerConfig | None:
        for owner in self.owners:
            if owner.id == owner_id:
                return owner
        return None


def cluster_fingerprint(config: ClusterConfig) -> str:
    """32 hex digits over the name, N/W/R, vnodes, peer ids and owners' fields: what decides
    where a mapping lives and which fields become tokens. Addresses, data directories, keys
    and local tuning may differ between peers' files; the secret is checked by the peers'
    signatures (http/peer_auth.py)."""
    agreed = {
        "name": config.name,
        "quorum": [
            config.quorum.replica_count,
            config.quorum.write_quorum,
            config.quorum.read_quorum,
        ],
        "vnodes_per_peer": config.vnodes_per_peer,
        "peers": sorted(p.id for p in config.peers),
        "owners": sorted([o.id, sorted(o.fields)] for o in config.owners),
    }
    canonical = json.dumps(agreed, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


SECRET_FILE_ENVIRONMENT_VARIABLE = "TOKENVAULT_SECRET_FILE"


def load_config(
    path: Path,
    *,
    environment: Mapping[str, str] | None = None,
    secret_file: Path | None = None,
) -> ClusterConfig:
    """`environment` defaults to the process's; `secret_file` wins over it and the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"no cluster configuration at {path}") from error
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    return parse_config(
        raw,
        path,
        environment=os.environ if environment is None else environment,
        secret_file=secret_file,
    )


def parse_config(
    raw: dict[str, Any],
    path: Path,
    *,
    environment: Mapping[str, str] | None = None,
    secret_file: Path | None = None,
) -> ClusterConfig:
    """`environment` (the process's, from load_config) may name the secret file; `secret_file`
    (a path relative to the working directory) names it whatever the environment says."""
    base = path.parent
    cluster = _table(raw, "cluster")
    replica_count = _int(cluster, "replicas", 3)
    write_quorum = _int(cluster, "write_quorum", 2)
    read_quorum = _int(cluster, "read_quorum", 2)
    problem = quorum_problem(replica_count, write_quorum, read_quorum)
    if problem:
        raise ConfigError(f"[cluster]: {problem}")
    vnodes = _int(cluster, "vnodes_per_peer", 64)
    if not 1 <= vnodes <= 4096:
        raise ConfigError("[cluster] vnodes_per_peer must be between 1 and 4096")
    anti_entropy_interval_s = _number(cluster, "anti_entropy_interval_s", 1.0, (0, 3600))
    transfer_rate_mb_s = _number(cluster, "transfer_rate_mb_s", 10.0, (0.01, 10_000))
    peers = tuple(_peer(entry, base) for entry in _array(raw, "peer"))
    if not peers:
        raise ConfigError("the configuration lists no [[peer]]")
    if len({p.id for p in peers}) != len(peers) or len({p.address for p in peers}) != len(peers):
        raise ConfigError("peer ids and addresses must be unique")
    if replica_count > len(peers):
        raise ConfigError("[cluster] replicas (N) exceeds the number of peers")
    owners = tuple(_owner(entry) for entry in _array(raw, "owner"))
    if len({o.id for o in owners}) != len(owners):
        raise ConfigError("owner ids must be unique")
    admin = _table(raw, "admin")
    admin_hash = _sha256(admin, "[admin]")
    key_hashes = [admin_hash, *(o.key_sha256 for o in owners)]
    if len(set(key_hashes)) != len(key_hashes):
        raise ConfigError("every owner and the admin need a key of their own")
    return ClusterConfig(
        path=path,
        name=str(cluster.get("name", "local")),
        quorum=QuorumConfig(
            replica_count=replica_count, write_quorum=write_quorum, read_quorum=read_quorum
        ),
        vnodes_per_peer=vnodes,
        secret=_secret(cluster, base, environment or {}, secret_file),
        peers=peers,
        owners=owners,
        admin_key_sha256=admin_hash,
        anti_entropy_interval_s=anti_entropy_interval_s,
        transfer_rate_mb_s=transfer_rate_mb_s,
        tls=_tls(raw, base),
    )


def is_valid_peer_id(text: str) -> bool:
    return _PEER_ID.fullmatch(text) is not None


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    table = raw.get(name)
    if not isinstance(table, dict):
        raise ConfigError(f"the configuration has no [{name}] table")
    return table


def _array(raw: dict[str, Any], name: str) -> list[dict[str, Any]]:
    entries = raw.get(name, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"[[{name}]] must be an array of tables")
    return entries


def _int(table: dict[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"[cluster] {key} must be an integer")
    return value


def _number(table: dict[str, Any], key: str, default: float, bounds: tuple[float, float]) -> float:
    value = table.get(key, default)
    low, high = bounds
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"[cluster] {key} must be between {low:g} and {high:g}")
    return float(value)


def _sha256(table: dict[str, Any], where: str) -> str:
    value = table.get("key_sha256")
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise ConfigError(f"{where} key_sha256 must be 64 lowercase hex characters")
    return value


def _peer(entry: dict[str, Any], base: Path) -> PeerConfig:
    peer_id = entry.get("id")
    if not isinstance(peer_id, str) or not _PEER_ID.fullmatch(peer_id):
        raise ConfigError("[[peer]] id must be 1-32 letters, digits, '_' or '-'")
    address = parse_host_port(entry.get("address"))
    if address is None:
        raise ConfigError(f"[[peer]] {peer_id}: address must be host:port")
    listen = None
    if "listen" in entry:
        listen = parse_host_port(entry["listen"])
        if listen is None:
            raise ConfigError(f"[[peer]] {peer_id}: listen must be host:port")
    data_dir = entry.get("data_dir", f"data/{peer_id}")
    if not isinstance(data_dir, str) or not data_dir:
        raise ConfigError(f"[[peer]] {peer_id}: data_dir must be a path")
    host, port = address
    return PeerConfig(id=peer_id, host=host, port=port, data_dir=base / data_dir, listen=listen)


def parse_host_port(text: object) -> tuple[str, int] | None:
    """(host, port) of "host:port" (host a name, an IPv4 address or a [bracketed] IPv6 one;
    port 1-65535), or None when `text` is not that."""
    host, _, port_text = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _owner(entry: dict[str, Any]) -> OwnerConfig:
    owner_id = entry.get("id")
    if not isinstance(owner_id, str) or not is_valid_owner_id(owner_id):
        raise ConfigError("[[owner]] id must be 1-64 letters, digits, '_', '-' or '.'")
    fields = entry.get("fields")
    if (
        not isinstance(fields, list)
        or not fields
        or not all(isinstance(f, str) and _FIELD_NAME.fullmatch(f) for f in fields)
    ):
        raise ConfigError(f"[[owner]] {owner_id}: fields must be a non-empty list of field names")
    return OwnerConfig(
        id=owner_id, key_sha256=_sha256(entry, f"[[owner]] {owner_id}"), fields=frozenset(fields)
    )


def _tls(raw: dict[str, Any], base: Path) -> TlsConfig | None:
    if "tls" not in raw:
        return None
    table = _table(raw, "tls")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("[tls] enabled must be true or false")
    if not enabled:
        return None
    files: dict[str, str] = {}
    for key, default in (
        ("ca_file", TLS_CA_FILE_DEFAULT),
        ("cert_file", TLS_CERT_FILE_DEFAULT),
        ("key_file", TLS_KEY_FILE_DEFAULT),
    ):
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"[tls] {key} must be a path")
        files[key] = value
    ca_path = base / files["ca_file"]
    try:
        with ca_path.open("rb"):
            pass
    except OSError as error:
        raise ConfigError(f"[tls] ca_file: cannot read {ca_path}: {error.strerror}") from error
    return TlsConfig(
        ca_path=ca_path, cert_file=files["cert_file"], key_file=files["key_file"], base=base
    )


def _secret(
    cluster: dict[str, Any],
    base: Path,
    environment: Mapping[str, str],
    secret_file: Path | None,
) -> bytes:
    name = cluster.get("secret_file", "secret")
    if not isinstance(name, str) or not name:
        raise ConfigError("[cluster] secret_file must be a path")
    path = base / name
    overridden = environment.get(SECRET_FILE_ENVIRONMENT_VARIABLE)
    if secret_file is not None:
        path = secret_file
    elif overridden is not None:
        if not overridden:
            raise ConfigError(f"{SECRET_FILE_ENVIRONMENT_VARIABLE} is set but empty")
        path = Path(overridden)
    try:
        secret = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the secret file {path}: {error.strerror}") from error
    if len(secret) < SECRET_BYTES_MIN:
        raise ConfigError(f"the secret file {path} must hold at least {SECRET_BYTES_MIN} bytes")
    return secret
