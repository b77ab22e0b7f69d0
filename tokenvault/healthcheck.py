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
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping

import httpx

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
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    verify: ssl.SSLContext | bool = False
    extensions: dict[str, str] = {}
    scheme = "http"
    if config.tls is not None:
        scheme = "https"
        try:
            verify = client_context(config.tls.ca_path)
        except ConfigError as error:
            return EXIT_UNHEALTHY, f"unhealthy: {error}"
        extensions["sni_hostname"] = peer.host.removeprefix("[").removesuffix("]")
    url = f"{scheme}://{authority}/healthz"
    try:
        with httpx.Client(verify=verify, timeout=HEALTHCHECK_TIMEOUT_S) as client:
            answer = client.get(url, extensions=extensions)
    except httpx.HTTPError as error:
        return EXIT_UNHEALTHY, f"unhealthy: {url}: {type(error).__name__}: {error}"
    if answer.status_code != 200:
        return EXIT_UNHEALTHY, f"unhealthy: {url} answered {answer.status_code}"
    return EXIT_HEALTHY, f"healthy: peer {settings.peer_id} at {url}"


def main() -> int:
    code, line = check(os.environ)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
