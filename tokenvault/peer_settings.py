"""The settings of one peer process (`tokenvault node`): which configuration, which peer, where
it binds, where its data and its secret are. Each comes from a command-line flag, else an
environment variable, else cluster.toml, so that a container, a StatefulSet or a systemd unit
configures its peer without editing the file every peer shares.

    setting       flag            environment              cluster.toml
    config        --config        TOKENVAULT_CONFIG        -
    peer id       --id            TOKENVAULT_ID            -
    listen        --listen        TOKENVAULT_LISTEN        [[peer]] listen, else its address
    data dir      --data-dir      TOKENVAULT_DATA_DIR      [[peer]] data_dir
    secret file   --secret-file   TOKENVAULT_SECRET_FILE   [cluster] secret_file
    join          --join          TOKENVAULT_JOIN          -  (a peer not in the file)
    address       --address       TOKENVAULT_ADDRESS       -  (with join: where peers reach it)

Rules:
- Flags win over the environment, the environment over the file. Paths from a flag or the
  environment are relative to the working directory; paths in the file, to the file.
- A variable that is set but empty is an error, not "unset": a typo in a manifest must not
  silently fall back to another value.
- Only the started peer's own entry changes (where it binds, where its data is): the addresses
  the peers reach each other at, and everything the cluster fingerprint covers, come from the
  file alone.
- Every problem is a ConfigError naming the flag or variable it came from, never a secret.
- Joining (docs/membership.md): a peer whose id is not in the file is started with join (the
  flag, or TOKENVAULT_JOIN=1) and its address (host:port, where the other peers reach it);
  its data directory defaults to `data/<id>` beside the file. The file's peers stay the
  bootstrap (the cluster fingerprint covers them alone). A bootstrap peer is never started with
  join, nor a joining peer without it: each is a ConfigError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tokenvault.config import (
    SECRET_FILE_ENVIRONMENT_VARIABLE,
    ClusterConfig,
    ConfigError,
    PeerConfig,
    load_config,
    parse_host_port,
)

CONFIG_ENVIRONMENT_VARIABLE = "TOKENVAULT_CONFIG"
ID_ENVIRONMENT_VARIABLE = "TOKENVAULT_ID"
LISTEN_ENVIRONMENT_VARIABLE = "TOKENVAULT_LISTEN"
DATA_DIR_ENVIRONMENT_VARIABLE = "TOKENVAULT_DATA_DIR"
JOIN_ENVIRONMENT_VARIABLE = "TOKENVAULT_JOIN"  # "1" or "true": join; "0" or "false": do not
ADDRESS_ENVIRONMENT_VARIABLE = "TOKENVAULT_ADDRESS"
# The variables that name one peer's own things: a supervisor that starts several peers from
# its own environment (`up`) must not hand them these (the secret is the same for all).
PER_PEER_ENVIRONMENT_VARIABLES = (
    CONFIG_ENVIRONMENT_VARIABLE,
    ID_ENVIRONMENT_VARIABLE,
    LISTEN_ENVIRONMENT_VARIABLE,
    DATA_DIR_ENVIRONMENT_VARIABLE,
    JOIN_ENVIRONMENT_VARIABLE,
    ADDRESS_ENVIRONMENT_VARIABLE,
)
_TRUE = ("1", "true")
_FALSE = ("0", "false")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFlags:
    """What the command line said; None where a flag was not given."""

    config: Path | None = None
    peer_id: str | None = None
    listen: str | None = None
    data_dir: Path | None = None
    secret_file: Path | None = None
    join: bool = False
    address: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    config: ClusterConfig  # the started peer's entry with its listen address and data dir
    peer_id: str
    # A joining peer's own entry (not in the file's peers, which stay the bootstrap); None for
    # a bootstrap peer.
    joining: PeerConfig | None = None


def resolve_peer_settings(flags: NodeFlags, environment: Mapping[str, str]) -> NodeSettings:
    """The configuration and peer a `node` runs, from `flags`, then `environment`, then the
    file. Raises ConfigError (naming the flag or variable) for anything missing or invalid."""
    config_path = _path(flags.config, "--config", environment, CONFIG_ENVIRONMENT_VARIABLE)
    if config_path is None:
        raise ConfigError(f"no configuration: give --config or set {CONFIG_ENVIRONMENT_VARIABLE}")
    chosen = _chosen(flags.peer_id, "--id", environment, ID_ENVIRONMENT_VARIABLE)
    if chosen is None:
        raise ConfigError(f"no peer id: give --id or set {ID_ENVIRONMENT_VARIABLE}")
    peer_id, source = chosen
    secret_file = _path(
        flags.secret_file, "--secret-file", environment, SECRET_FILE_ENVIRONMENT_VARIABLE
    )
    config = load_config(config_path, environment=environment, secret_file=secret_file)
    joining = _joining(flags, environment, config, peer_id)
    if joining is not None:
        peer = joining
    else:
        try:
            peer = config.peer(peer_id)
        except ConfigError as error:
            raise ConfigError(f"{error} (from {source}); a new peer joins with --join") from None
    listen = _chosen(flags.listen, "--listen", environment, LISTEN_ENVIRONMENT_VARIABLE)
    if listen is not None:
        host_port = parse_host_port(listen[0])
        if host_port is None:
            raise ConfigError(f"{listen[1]} must be host:port, e.g. 0.0.0.0:7600")
        peer = dataclasses.replace(peer, listen=host_port)
    data_dir = _path(flags.data_dir, "--data-dir", environment, DATA_DIR_ENVIRONMENT_VARIABLE)
    if data_dir is not None:
        peer = dataclasses.replace(peer, data_dir=data_dir)
    if joining is not None:
        return NodeSettings(config=config, peer_id=peer_id, joining=peer)
    peers = tuple(peer if p.id == peer_id else p for p in config.peers)
    return NodeSettings(config=dataclasses.replace(config, peers=peers), peer_id=peer_id)


def _joining(
    flags: NodeFlags, environment: Mapping[str, str], config: ClusterConfig, peer_id: str
) -> PeerConfig | None:
    """The entry of a peer started to join (not in the file), or None when it does not join."""
    join = flags.join or _flag_variable(environment, JOIN_ENVIRONMENT_VARIABLE)
    address = _chosen(flags.address, "--address", environment, ADDRESS_ENVIRONMENT_VARIABLE)
    bootstrap = peer_id in {p.id for p in config.peers}
    if not join:
        if address is not None and not bootstrap:
            raise ConfigError(f"{address[1]} names a new peer's address: give --join too")
        return None
    if bootstrap:
        raise ConfigError(
            f"peer {peer_id!r} is in {config.path} (a bootstrap peer): start it without --join"
        )
    if address is None:
        variable = ADDRESS_ENVIRONMENT_VARIABLE
        raise ConfigError(f"a joining peer needs its address: give --address or set {variable}")
    host_port = parse_host_port(address[0])
    if host_port is None:
        raise ConfigError(f"{address[1]} must be host:port, e.g. 10.0.0.4:7404")
    if address[0] in {p.address for p in config.peers}:
        raise ConfigError(f"{address[1]} is a bootstrap peer's address")
    host, port = host_port
    data_dir = config.path.parent / "data" / peer_id
    return PeerConfig(id=peer_id, host=host, port=port, data_dir=data_dir)


def _flag_variable(environment: Mapping[str, str], variable: str) -> bool:
    value = environment.get(variable)
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise ConfigError(f"{variable} must be 1, true, 0 or false")


def _chosen(
    flag: str | None, flag_name: str, environment: Mapping[str, str], variable: str
) -> tuple[str, str] | None:
    """(value, where it came from): the flag's, else the variable's; None when neither is
    given. An empty value is an error."""
    if flag is not None:
        value, source = flag, flag_name
    elif variable in environment:
        value, source = environment[variable], variable
    else:
        return None
    if not value:
        raise ConfigError(f"{source} is given but empty")
    return value, source


def _path(
    flag: Path | None, flag_name: str, environment: Mapping[str, str], variable: str
) -> Path | None:
    chosen = _chosen(None if flag is None else str(flag), flag_name, environment, variable)
    return None if chosen is None else Path(chosen[0])
