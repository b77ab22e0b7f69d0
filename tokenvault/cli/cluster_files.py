"""The files of a cluster directory as the commands use them: reading its configuration and
keys, and writing a new cluster with `init_cluster`.

Rules:
- A configuration or key file that is missing or invalid is a CliError with exit code 2 (bad
  configuration), as are invalid parameters of a new cluster (bad usage); a cluster that
  cannot be written (one is already there, a disk error) is a CliError with exit code 1.
- What `init` wrote is printed as paths and peers only: the API keys never are.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

from tokenvault.cli.exits import EXIT_USAGE, CliError
from tokenvault.cluster_init import (
    ClusterKeys,
    InitError,
    InitParameterError,
    InitResult,
    load_keys,
)
from tokenvault.config import ClusterConfig, ConfigError, load_config
from tokenvault.tls import client_context


def load_cluster_config(path: Path) -> ClusterConfig:
    try:
        return load_config(path)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from error


def cluster_client_context(ca_path: Path) -> ssl.SSLContext:
    """An HTTPS client's context that trusts the cluster CA in ca_path."""
    try:
        return client_context(ca_path)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from error


def load_cluster_keys(path: Path) -> ClusterKeys:
    try:
        return load_keys(path)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from error


@contextlib.contextmanager
def init_errors(directory: Path) -> Iterator[None]:
    """Turns a failure of `init_cluster` into directory into a CliError."""
    try:
        yield
    except InitParameterError as error:
        raise CliError(f"init: {error}", EXIT_USAGE) from error
    except InitError as error:
        raise CliError(f"init: {error}") from error
    except OSError as error:
        where = error.filename or directory
        raise CliError(f"init: cannot write {where}: {error.strerror}") from error


def print_init_result(result: InitResult) -> None:
    print(f"wrote a new cluster into {result.directory}")
    print(f"  config:  {result.config_path}")
    print(f"  keys:    {result.keys_path}  (mode 0600: the API keys, keep it private)")
    print(f"  secret:  {result.secret_path}  (mode 0600)")
    if result.tls_dir is not None:
        print(
            f"  tls:     {result.tls_dir}{os.sep}  (mode 0600: the cluster CA as ca.pem and ca.key,"
            " each peer's certificate and key)"
        )
    print(f"  owners:  {', '.join(result.owners)}")
    for peer in result.peers:
        print(f"  peer {peer.id}: {peer.address}, data in {peer.data_dir}")
