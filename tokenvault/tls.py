"""TLS between the peers of a cluster and for its clients: the ssl contexts each side uses, and
the peer id a certificate carries.

Rules:
- The cluster's private CA (`init --tls`, tls_certificates.py) is the only trust anchor: every
  context here loads the CA file and no system certificates.
- A peer's identity is the one URI subject alternative name `tokenvault://peer/<id>` of its
  certificate; the common name repeats the id for people and is never trusted. A certificate
  with no such URI, or with several, names no peer.
- Peer links are mutual TLS. The connecting peer presents its own certificate and checks that
  the server's chains to the CA and names the peer it meant to reach (http/client.py); the
  host name is not checked on peer links, the peer id is the stronger statement. The server
  asks every client for a certificate and requires none (CERT_OPTIONAL: public clients have
  none), but one that is presented must chain to the CA, and its peer id reaches the handler.
- Public clients (the command line, `up`'s health checks) check the chain and the host name,
  as any HTTPS client does: a peer's certificate names its host as an IP or DNS name.
- TLS 1.2 at least. The server issues no session tickets: connections are long-lived and no
  client here resumes a session, so tickets would be bytes sent for nothing.
- A file that cannot be read or parsed is a ConfigError naming the file, never its content.

This module needs only the standard library: the command line imports it at every start.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenvault.config import ConfigError, is_valid_peer_id

PEER_URI_PREFIX = "tokenvault://peer/"


def peer_uri(peer_id: str) -> str:
    """The URI subject alternative name that makes a certificate peer `peer_id`'s."""
    return PEER_URI_PREFIX + peer_id


def peer_id_of_certificate(certificate: Mapping[str, Any] | None) -> str | None:
    """The peer id of a verified certificate as `SSLObject.getpeercert()` returns it, or None."""
    if not certificate:
        return None
    ids = [
        value[len(PEER_URI_PREFIX) :]
        for kind, value in certificate.get("subjectAltName", ())
        if kind == "URI" and value.startswith(PEER_URI_PREFIX)
    ]
    if len(ids) != 1 or not is_valid_peer_id(ids[0]):
        return None
    return str(ids[0])


def client_context(ca_path: Path) -> ssl.SSLContext:
    """A public client's context: trusts the cluster CA only, checks host names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(context, ca_path)
    return context


def server_context(*, ca_path: Path, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A peer's server context: its own certificate; client certificates optional, verified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_OPTIONAL
    context.num_tickets = 0
    _load_ca(context, ca_path)
    _load_own(context, cert_path, key_path)
    return context


def peer_link_context(*, ca_path: Path, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A peer's context for its links to the others: presents its own certificate, verifies
    the server's chain; the caller checks the server's peer id instead of its host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    _load_ca(context, ca_path)
    _load_own(context, cert_path, key_path)
    return context


def _load_ca(context: ssl.SSLContext, ca_path: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca_path)
    except ssl.SSLError as error:  # an OSError too: first
        raise ConfigError(f"{ca_path} holds no usable CA certificate ({error.reason})") from error
    except OSError as error:
        raise ConfigError(f"cannot read the CA certificate {ca_path}: {error.strerror}") from error


def _load_own(context: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    try:
        context.load_cert_chain(certfile=cert_path, keyfile=key_path)
    except ssl.SSLError as error:  # an OSError too: first
        raise ConfigError(
            f"{cert_path} and {key_path} are not a certificate and its key ({error.reason})"
        ) from error
    except OSError as error:
        where = error.filename or f"{cert_path} or {key_path}"
        raise ConfigError(f"cannot read {where}: {error.strerror}") from error
