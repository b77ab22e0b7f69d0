"""`python -m tokenvault.healthcheck`: a container's HEALTHCHECK that needs no curl. Exit 0 when
the peer that this environment configures answers GET /healthz with 200 (liveness: the process
answers), else exit 1 with one line on stdout saying why (Docker keeps it in `docker inspect`).

Rules:
- It finds the peer exactly as `tokenvault node` does from the same environment
  (peer_settings.py: TOKENVAULT_CONFIG, TOKENVAULT_ID, TOKENVAULT_LISTEN, ...; no flags) and asks
  it where it binds; a wildcard bind (0.0.0.0, ::) is asked on the loopback.
- With TLS it checks the peer's certificate against the cluster CA under the peer's advertised
  host name (sent as SNI), as any client of that peer would, while connecting to where it binds.
- One request of HEALTHCHECK_TIMEOUT_S at most; never a traceback, a key or the secret.
- The standard library's http.client, not httpx: a check runs every few seconds in a fresh
  interpreter, and importing httpx costs more than the rest together (~0.8 s on a busy machine).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys
from collections.abc import Mapping

from tokenvault.config import ConfigError
from tokenvault.peer_settings import NodeFlags, resolve_peer_settings
from tokenvault.tls import client_context

HEALTHCHECK_TIMEOUT_S = 3.0
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1  # the only other code Docker's HEALTHCHECK defines
_LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def check(environment: Mapping[str, str]) -> tuple[int, str]:
    """(exit code, the line to print)."""
    try:
        settings = resolve_peer_settings(NodeFlags(), environment)
    except ConfigError as error:
        return EXIT_UNHEALTHY, f"unhealthy: {error}"
    config = settings.config
    peer = config.peer(settings.peer_id)
    bind_host, port = peer.listen_address
    host = _LOOPBACK_FOR_WILDCARD.get(bind_host, bind_host)
    connection: http.client.HTTPConnection
    if config.tls is None:
        connection = http.client.HTTPConnection(host, port, timeout=HEALTHCHECK_TIMEOUT_S)
        url = f"http://{bind_host}:{port}/healthz"
    else:
        try:
            context = client_context(config.tls.ca_path)
        except ConfigError as error:
            return EXIT_UNHEALTHY, f"unhealthy: {error}"
        name = peer.host.removeprefix("[").removesuffix("]")
        connection = _NamedHttpsConnection(host, port, name=name, context=context)
        url = f"https://{bind_host}:{port}/healthz (certificate for {name})"
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return EXIT_UNHEALTHY, f"unhealthy: {url}: {type(error).__name__}: {error}"
    finally:
        connection.close()
    if status != 200:
        return EXIT_UNHEALTHY, f"unhealthy: {url} answered {status}"
    return EXIT_HEALTHY, f"healthy: peer {settings.peer_id} at {url}"


class _NamedHttpsConnection(http.client.HTTPSConnection):
    """HTTPS to `connect_host`, the certificate checked (and SNI sent) for `name`."""

    def __init__(self, connect_host: str, port: int, *, name: str, context: ssl.SSLContext):
        super().__init__(name, port, timeout=HEALTHCHECK_TIMEOUT_S, context=context)
        self._connect_host = connect_host
        self._checked_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self._connect_host, self.port), self.timeout)
        try:
            self.sock = self._checked_context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def main() -> int:
    code, line = check(os.environ)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
