"""Writing a new cluster into a directory (`tokenvault init`), reading back its keys file, and
renewing its peers' TLS certificates (`tokenvault renew-certs`).

Rules:
- Never overwrite: if the directory already holds a cluster.toml, keys.json or secret, or a peer's
  data directory already holds something, nothing is written and `InitError` says why
  (`InitParameterError` when the parameters themselves are invalid).
- Validate everything before touching the disk; on any error nothing new is left behind.
- The secret (32 random bytes) and keys.json are created mode 0600 from the first byte: a temporary
  file opened with that mode, fsync'd, then linked into place (a link never replaces a file).
- cluster.toml is written last, so its presence marks a complete cluster; `load_config` accepts it.
- API keys are "tv_" + 32 random URL-safe bytes; only their SHA-256 goes into cluster.toml.
- With `tls`, a private CA and one certificate per peer (tls_certificates.py) go into tls/: the CA's
  certificate and key as ca.pem and ca.key, peer n1's as n1.pem and n1.key, every file 0600
  like the secret; cluster.toml gets a [tls] section naming them. Everything is generated
  before the disk is touched. cryptography is imported only then: other commands start
  without it.
- Renewing is the one place that replaces files: a peer's new certificate and key, issued by
  the CA whose key is tls/ca.key for the peer's address in cluster.toml as it is now, each
  written 0600 to a temporary file, fsync'd, then renamed over the old one.
- A peer outside cluster.toml (one that joins with `node --join`, or joined) gets its files the
  same way, for the address given with it, under the names its id gives in [tls] (where `node`
  looks for them); an id of cluster.toml given an address is refused: its address is the file's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tokenvault.config import (
    PEER_PLACEHOLDER,
    TLS_CA_FILE_DEFAULT,
    TLS_CERT_FILE_DEFAULT,
    TLS_KEY_FILE_DEFAULT,
    ClusterConfig,
    ConfigError,
    PeerConfig,
    is_valid_peer_id,
    parse_host_port,
)
from tokenvault.quorum.messages import is_valid_owner_id
from tokenvault.quorum.quorum_config import quorum_problem
from tokenvault.tokens import hash_api_key

CONFIG_NAME = "cluster.toml"
KEYS_NAME = "keys.json"
SECRET_NAME = "secret"
TLS_DIR_NAME = "tls"
TLS_CA_KEY_FILE = "tls/ca.key"  # kept for issuing more certificates; never read by peers
CLUSTER_NAME = "local"
SECRET_BYTES = 32
KEY_PREFIX = "tv_"
KEY_RANDOM_BYTES = 32
VNODES_PER_PEER = 64
OWNER_FIELDS = ("ssn", "card_number", "email")
NODES_MAX = 256
PORT_MAX = 65535
_PRIVATE_FILE_MODE = 0o600
_PUBLIC_FILE_MODE = 0o644
_PRIVATE_DIR_MODE = 0o700
# A host name or IPv4 address; an IPv6 literal goes in brackets.
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


class InitError(Exception):
    """A new cluster cannot be written: bad parameters, or one is already there."""


class InitParameterError(InitError):
    """The parameters themselves are invalid (bad usage), whatever the directory holds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InitPeer:
    id: str
    address: str
    data_dir: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class InitResult:
    directory: Path
    config_path: Path
    keys_path: Path
    secret_path: Path
    peers: tuple[InitPeer, ...]
    owners: tuple[str, ...]
    tls_dir: Path | None = None  # None: a plain-HTTP cluster


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterKeys:
    """The contents of keys.json. Never print or log it."""

    admin: str
    owners: dict[str, str]

    def __repr__(self) -> str:
        return f"ClusterKeys(owners={sorted(self.owners)})"


def init_cluster(
    directory: Path,
    *,
    nodes: int,
    base_port: int,
    owners: Sequence[str] = ("alice", "bob"),
    replicas: int = 3,
    write_quorum: int = 2,
    read_quorum: int = 2,
    host: str = "127.0.0.1",
    tls: bool = False,
) -> InitResult:
    """Write cluster.toml, secret and keys.json for a new cluster of `nodes` peers into directory,
    and with `tls` its CA and the peers' certificates.

    Peer i (1-based) is "n<i>" at host:(base_port + i) with data in data/n<i>.
    """
    owner_ids = tuple(owners)
    problem = _parameter_problem(
        nodes=nodes,
        base_port=base_port,
        owners=owner_ids,
        replicas=replicas,
        write_quorum=write_quorum,
        read_quorum=read_quorum,
        host=host,
    )
    if problem:
        raise InitParameterError(problem)
    peers = tuple(
        InitPeer(id=f"n{i}", address=f"{host}:{base_port + i}", data_dir=Path("data", f"n{i}"))
        for i in range(1, nodes + 1)
    )
    _refuse_existing(directory, peers, tls=tls)

    tls_files = _tls_files(peers) if tls else {}
    keys = ClusterKeys(admin=new_api_key(), owners={owner: new_api_key() for owner in owner_ids})
    config_text = render_config(
        peers=peers,
        keys=keys,
        replicas=replicas,
        write_quorum=write_quorum,
        read_quorum=read_quorum,
        tls=tls,
    )
    keys_text = json.dumps({"admin": keys.admin, "owners": keys.owners}, indent=2) + "\n"

    created: list[Path] = []
    try:
        _make_dirs(directory, created)
        for peer in peers:
            _make_dirs(directory / peer.data_dir, created)
        _write_new_file(
            directory / SECRET_NAME, secrets.token_bytes(SECRET_BYTES), _PRIVATE_FILE_MODE, created
        )
        _write_new_file(directory / KEYS_NAME, keys_text.encode(), _PRIVATE_FILE_MODE, created)
        if tls_files:
            _make_dirs(directory / TLS_DIR_NAME, created)
        for relative, data in tls_files.items():
            _write_new_file(directory / relative, data, _PRIVATE_FILE_MODE, created)
        _write_new_file(directory / CONFIG_NAME, config_text.encode(), _PUBLIC_FILE_MODE, created)
        _fsync_dir(directory)
    except BaseException:
        _remove_created(created)
        raise
    return InitResult(
        directory=directory,
        config_path=directory / CONFIG_NAME,
        keys_path=directory / KEYS_NAME,
        secret_path=directory / SECRET_NAME,
        peers=tuple(
            InitPeer(id=p.id, address=p.address, data_dir=directory / p.data_dir) for p in peers
        ),
        owners=owner_ids,
        tls_dir=directory / TLS_DIR_NAME if tls else None,
    )


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def render_config(
    *,
    peers: Sequence[InitPeer],
    keys: ClusterKeys,
    replicas: int,
    write_quorum: int,
    read_quorum: int,
    tls: bool = False,
) -> str:
    """cluster.toml in the layout of API.md; peers' data_dir must be relative paths."""
    lines = [
        "# Written by `tokenvault init`. Paths are relative to this file.",
        "[cluster]",
        f"name = {_toml_string(CLUSTER_NAME)}",
        f"replicas = {replicas}",
        f"write_quorum = {write_quorum}",
        f"read_quorum = {read_quorum}",
        f"vnodes_per_peer = {VNODES_PER_PEER}",
        f"secret_file = {_toml_string(SECRET_NAME)}",
    ]
    for peer in peers:
        assert not peer.data_dir.is_absolute()
        lines += [
            "",
            "[[peer]]",
            f"id = {_toml_string(peer.id)}",
            f"address = {_toml_string(peer.address)}",
            f"data_dir = {_toml_string(peer.data_dir.as_posix())}",
        ]
    fields = ", ".join(_toml_string(field) for field in OWNER_FIELDS)
    for owner, key in keys.owners.items():
        lines += [
            "",
            "[[owner]]",
            f"id = {_toml_string(owner)}",
            f"key_sha256 = {_toml_string(hash_api_key(key))}",
            f"fields = [{fields}]",
        ]
    lines += ["", "[admin]", f"key_sha256 = {_toml_string(hash_api_key(keys.admin))}"]
    if tls:
        lines += [
            "",
            f"# HTTPS and mutual TLS between peers; {PEER_PLACEHOLDER} is each peer's id.",
            "[tls]",
            "enabled = true",
            f"ca_file = {_toml_string(TLS_CA_FILE_DEFAULT)}",
            f"cert_file = {_toml_string(TLS_CERT_FILE_DEFAULT)}",
            f"key_file = {_toml_string(TLS_KEY_FILE_DEFAULT)}",
        ]
    return "\n".join(lines) + "\n"


def load_keys(path: Path) -> ClusterKeys:
    """Read keys.json as written by `init_cluster`; `ConfigError` if missing or malformed."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"no keys file at {path}") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read the keys file {path}") from error
    admin = raw.get("admin") if isinstance(raw, dict) else None
    owners = raw.get("owners") if isinstance(raw, dict) else None
    if (
        not isinstance(admin, str)
        or not isinstance(owners, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in owners.items())
    ):
        raise ConfigError(f'{path} must hold {{"admin": "<key>", "owners": {{"<id>": "<key>"}}}}')
    return ClusterKeys(admin=admin, owners=dict(owners))


def _parameter_problem(
    *,
    nodes: int,
    base_port: int,
    owners: tuple[str, ...],
    replicas: int,
    write_quorum: int,
    read_quorum: int,
    host: str,
) -> str:
    if not 1 <= nodes <= NODES_MAX:
        return f"nodes must be between 1 and {NODES_MAX}"
    if base_port < 0 or base_port + nodes > PORT_MAX:
        return f"ports base_port+1 .. base_port+nodes must lie within 1..{PORT_MAX}"
    if not _HOST.fullmatch(host):
        return f"host {host!r} is not a host name or IP address"
    problem = quorum_problem(replicas, write_quorum, read_quorum)
    if problem:
        return problem
    if replicas > nodes:
        return f"replicas (N={replicas}) cannot exceed the number of nodes ({nodes})"
    if not owners:
        return "at least one owner is needed"
    for owner in owners:
        if not is_valid_owner_id(owner):
            return f"owner id {owner!r} must be 1-64 letters, digits, '_', '-' or '.'"
    if len(set(owners)) != len(owners):
        return "owner ids must be unique"
    return ""


def _tls_files(peers: Sequence[InitPeer]) -> dict[str, bytes]:
    """The CA and every peer's certificate and key: relative path -> PEM bytes."""
    from tokenvault.tls_certificates import issue_peer_certificate, new_certificate_authority

    now = datetime.now(UTC)
    ca = new_certificate_authority(CLUSTER_NAME, now=now)
    files = {TLS_CA_FILE_DEFAULT: ca.certificate_pem, TLS_CA_KEY_FILE: ca.key_pem}
    for peer in peers:
        host = peer.address.rpartition(":")[0]
        issued = issue_peer_certificate(ca, peer.id, host, now=now)
        files[TLS_CERT_FILE_DEFAULT.replace(PEER_PLACEHOLDER, peer.id)] = issued.certificate_pem
        files[TLS_KEY_FILE_DEFAULT.replace(PEER_PLACEHOLDER, peer.id)] = issued.key_pem
    return files


def renew_peer_certificates(
    config: ClusterConfig,
    peer_ids: Sequence[str] = (),
    *,
    ca_key_path: Path | None = None,
    address: str | None = None,
) -> list[tuple[str, datetime]]:
    """New certificates and keys for `peer_ids` (every peer when empty), from the cluster CA,
    for each peer's address in `config`: (peer id, valid until) of each. With `address`: one
    peer outside cluster.toml (a peer that joins), for that address. ConfigError when TLS is
    off, a peer is unknown (or, with `address`, not one new peer), or the CA's key cannot be
    read or matches no CA certificate."""
    from tokenvault.tls_certificates import authority_of, issue_peer_certificate

    if config.tls is None:
        raise ConfigError(f"{config.path} has TLS off: there are no certificates to renew")
    tls = config.tls
    if address is None:
        hosts = [(peer.id, peer.host) for peer in _peers_of(config, peer_ids)]
    else:
        hosts = [_peer_outside(config, peer_ids, address)]
    key_path = ca_key_path or config.path.parent / TLS_CA_KEY_FILE
    ca = authority_of(tls.ca_path, key_path)
    now = datetime.now(UTC)
    renewed = []
    for peer_id, host in hosts:
        issued = issue_peer_certificate(ca, peer_id, host, now=now)
        _replace_file(tls.key_path(peer_id), issued.key_pem, _PRIVATE_FILE_MODE)
        _replace_file(tls.cert_path(peer_id), issued.certificate_pem, _PRIVATE_FILE_MODE)
        renewed.append((peer_id, issued.not_valid_after))
    return renewed


def _peers_of(config: ClusterConfig, peer_ids: Sequence[str]) -> list[PeerConfig]:
    return [config.peer(peer_id) for peer_id in peer_ids] or list(config.peers)


def _peer_outside(config: ClusterConfig, peer_ids: Sequence[str], address: str) -> tuple[str, str]:
    """(id, host) of the one peer outside cluster.toml that `address` is given for."""
    if len(peer_ids) != 1:
        raise ConfigError("an address is given for one peer: name it (and it alone)")
    (peer_id,) = peer_ids
    if not is_valid_peer_id(peer_id):
        raise ConfigError(f"{peer_id!r} is no peer id (1-32 letters, digits, '_' or '-')")
    if any(peer.id == peer_id for peer in config.peers):
        raise ConfigError(
            f"{peer_id} is in {config.path}: its certificate is for the address there"
            " (renew it without an address)"
        )
    host_port = parse_host_port(address)
    if host_port is None:
        raise ConfigError(f"{address!r} is not host:port")
    return peer_id, host_port[0]


def _refuse_existing(directory: Path, peers: Sequence[InitPeer], *, tls: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise InitError(f"{directory} exists and is not a directory")
    tls_dir = directory / TLS_DIR_NAME
    if tls and tls_dir.exists() and (not tls_dir.is_dir() or any(tls_dir.iterdir())):
        raise InitError(f"{tls_dir} already holds files: refusing to overwrite them")
    for name in (CONFIG_NAME, KEYS_NAME, SECRET_NAME):
        if (directory / name).exists():
            raise InitError(
                f"{directory / name} already exists: refusing to overwrite a cluster "
                "(use another --dir, or delete that directory to start afresh)"
            )
    for peer in peers:
        data_dir = directory / peer.data_dir
        if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
            raise InitError(
                f"{data_dir} already holds data: refusing to reuse it for a new cluster"
            )


def _make_dirs(path: Path, created: list[Path]) -> None:
    """mkdir -p, remembering every directory it made (parents first)."""
    missing: list[Path] = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        candidate.mkdir(mode=_PRIVATE_DIR_MODE)
        created.append(candidate)


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """A new temporary file next to path, created with mode, holding data, fsync'd."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def _write_new_file(path: Path, data: bytes, mode: int, created: list[Path]) -> None:
    """Write data to a new file at path with mode, durably; never replaces an existing file."""
    temporary = _write_temporary(path, data, mode)
    try:
        try:
            os.link(temporary, path)
        except FileExistsError as error:
            raise InitError(f"{path} appeared while writing: refusing to overwrite it") from error
        created.append(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write data to path with mode, durably, replacing what is there in one rename."""
    temporary = _write_temporary(path, data, mode)
    try:
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_created(created: list[Path]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string for any value without lone surrogates.
    return json.dumps(value)
