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

Rules:
- Flags win over the environment, the environment over the file. Paths from a flag or the
  environment are relative to the working directory; paths in the file, to the file.
- A variable that is set but empty is an error, not "unset": a typo in a manifest must not
  silently fall back to another value.
- Only the started peer's own entry changes (where it binds, where its data is): the addresses
  the peers reach each other at, and everything the cluster fingerprint covers, come from the
  file alone.
- Every problem is a ConfigError naming the flag or variable it came from, never a secret.
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
    load_config,
    parse_host_port,
)

CONFIG_ENVIRONMENT_VARIABLE = "TOKENVAULT_CONFIG"
ID_ENVIRONMENT_VARIABLE = "TOKENVAULT_ID"
LISTEN_ENVIRONMENT_VARIABLE = "TOKENVAULT_LISTEN"
DATA_DIR_ENVIRONMENT_VARIABLE = "TOKENVAULT_DATA_DIR"
# The variables that name one peer's own things: a supervisor that starts several peers from
# its own environment (`up`) must not hand them these (the secret is the same for all).
PER_PEER_ENVIRONMENT_VARIABLES = (
    CONFIG_ENVIRONMENT_VARIABLE,
    ID_ENVIRONMENT_VARIABLE,
    LISTEN_ENVIRONMENT_VARIABLE,
    DATA_DIR_ENVIRONMENT_VARIABLE,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFlags:
    """What the command line said; None where a flag was not given."""

    config: Path | None = None
    peer_id: str | None = None
    listen: str | None = None
    data_dir: Path | None = None
    secret_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    config: ClusterConfig  # the started peer's entry with its listen address and data dir
    peer_id: str


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
    try:
        peer = config.peer(peer_id)
    except ConfigError as error:
        raise ConfigError(f"{error} (from {source})") from None
    listen = _chosen(flags.listen, "--listen", environment, LISTEN_ENVIRONMENT_VARIABLE)
    if listen is not None:
        host_port = parse_host_port(listen[0])
        if host_port is None:
            raise ConfigError(f"{listen[1]} must be host:port, e.g. 0.0.0.0:7600")
        peer = dataclasses.replace(peer, listen=host_port)
    data_dir = _path(flags.data_dir, "--data-dir", environment, DATA_DIR_ENVIRONMENT_VARIABLE)
    if data_dir is not None:
        peer = dataclasses.replace(peer, data_dir=data_dir)
    peers = tuple(peer if p.id == peer_id else p for p in config.peers)
    return NodeSettings(config=dataclasses.replace(config, peers=peers), peer_id=peer_id)


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
