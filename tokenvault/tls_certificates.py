"""The cluster's private certificate authority and its peers' certificates: issuing them for
`init --tls`, and checking a peer's own files before it serves with them.

Rules:
- Keys are EC P-256 (ECDSA with SHA-256): what every TLS client and Python's ssl support.
- The CA is self-signed, valid CA_VALIDITY_DAYS (10 years), may sign peer certificates only
  (path length 0), and its name carries a random suffix so two clusters' CAs never share one.
- A peer certificate is valid PEER_CERTIFICATE_VALIDITY_DAYS (2 years) and names its peer in
  the URI subject alternative name `tokenvault://peer/<id>` (tls.py reads it back) and its host
  as an IP or DNS name; it serves both as a TLS server and as a TLS client (mutual TLS between
  peers). Both validities start NOT_BEFORE_BACKDATE_S early, for clocks a little behind.
- A peer starts only with its own certificate: issued by the CA in ca_file, naming this peer,
  valid now, with the key that matches it. Anything else is a ConfigError naming the file.
- Key material never reaches a repr, a log line or an error message.
"""

from __future__ import annotations

import ipaddress
import secrets
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tokenvault.config import ConfigError, TlsConfig
from tokenvault.tls import PEER_URI_PREFIX, peer_link_context, peer_uri, server_context

CA_VALIDITY_DAYS = 3650
PEER_CERTIFICATE_VALIDITY_DAYS = 730
NOT_BEFORE_BACKDATE_S = 300


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    certificate_pem: bytes
    key_pem: bytes
    not_valid_after: datetime  # UTC

    def __repr__(self) -> str:
        return (
            f"IssuedCertificate(<PEM certificate and key>, not_valid_after={self.not_valid_after})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerTls:
    """A peer's ssl contexts, from its checked files."""

    server_context: ssl.SSLContext  # the HTTPS listener: client certificates optional
    link_context: ssl.SSLContext  # its links to the other peers: presents its certificate
    not_valid_after: datetime  # when its own certificate expires (UTC)


def new_certificate_authority(cluster_name: str, *, now: datetime) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tokenvault"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"tokenvault CA {cluster_name} {secrets.token_hex(4)}"
            ),
        ]
    )
    public_key = key.public_key()
    certificate = (
        _validity(x509.CertificateBuilder(), now, CA_VALIDITY_DAYS)
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _issued(certificate, key)


def authority_of(ca_path: Path, key_path: Path) -> IssuedCertificate:
    """The CA that `key_path` holds the key of, out of the certificates in `ca_path`."""
    try:
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except ValueError as error:
        raise ConfigError(f"{key_path} holds no PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an EC key, as init --tls makes them")
    for certificate in _load_certificates(ca_path):
        if certificate.public_key() == key.public_key():
            return _issued(certificate, key)
    raise ConfigError(f"{key_path} is the key of no CA certificate in {ca_path}")


def issue_peer_certificate(
    ca: IssuedCertificate, peer_id: str, host: str, *, now: datetime
) -> IssuedCertificate:
    """A certificate for peer `peer_id` serving on `host` (an IP, a [IPv6] or a DNS name)."""
    ca_certificate = x509.load_pem_x509_certificate(ca.certificate_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key_id = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    certificate = (
        _validity(x509.CertificateBuilder(), now, PEER_CERTIFICATE_VALIDITY_DAYS)
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tokenvault"),
                    x509.NameAttribute(NameOID.COMMON_NAME, peer_id),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(peer_uri(peer_id)), _host_name(host)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id.value),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _issued(certificate, key)


def certificate_peer_id(certificate: x509.Certificate) -> str | None:
    """The peer a certificate names (its one `tokenvault://peer/` URI), as tls.py reads it."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    ids = [
        uri[len(PEER_URI_PREFIX) :]
        for uri in names.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(PEER_URI_PREFIX)
    ]
    return ids[0] if len(ids) == 1 else None


def load_peer_tls(tls: TlsConfig, peer_id: str, *, now: datetime) -> PeerTls:
    """Peer `peer_id`'s contexts, once its certificate is checked (module rules)."""
    cert_path, key_path = tls.cert_path(peer_id), tls.key_path(peer_id)
    authorities = _load_certificates(tls.ca_path)
    certificate = _load_certificates(cert_path)[0]
    named = certificate_peer_id(certificate)
    if named != peer_id:
        raise ConfigError(
            f"{cert_path} is not peer {peer_id}'s certificate"
            f" (it names {'no peer' if named is None else 'peer ' + repr(named)})"
        )
    if not any(_issued_by(certificate, authority) for authority in authorities):
        raise ConfigError(f"{cert_path} was not issued by the CA in {tls.ca_path}")
    if now < certificate.not_valid_before_utc:
        raise ConfigError(f"{cert_path} is not valid before {certificate.not_valid_before_utc}")
    if now >= certificate.not_valid_after_utc:
        raise ConfigError(
            f"{cert_path} expired on {certificate.not_valid_after_utc}: issue a new one"
            " (docs/operations.md, TLS)"
        )
    _read(key_path)  # a clear error for a missing key, before ssl's
    files = {"ca_path": tls.ca_path, "cert_path": cert_path, "key_path": key_path}
    return PeerTls(
        server_context=server_context(**files),
        link_context=peer_link_context(**files),
        not_valid_after=certificate.not_valid_after_utc,
    )


def _validity(
    builder: x509.CertificateBuilder, now: datetime, days: int
) -> x509.CertificateBuilder:
    start = now - timedelta(seconds=NOT_BEFORE_BACKDATE_S)
    return builder.not_valid_before(start).not_valid_after(start + timedelta(days=days))


def _key_usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _host_name(host: str) -> x509.GeneralName:
    bare = host.removeprefix("[").removesuffix("]")
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        return x509.DNSName(bare)


def _issued(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> IssuedCertificate:
    return IssuedCertificate(
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        not_valid_after=certificate.not_valid_after_utc,
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from error


def _load_certificates(path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in path, in order: at least one."""
    try:
        return x509.load_pem_x509_certificates(_read(path))
    except ValueError as error:
        raise ConfigError(f"{path} holds no PEM certificate") from error


def _issued_by(certificate: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
