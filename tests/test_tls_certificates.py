"""tls_certificates.py and the files `init --tls` and renewal write: what the CA and the peer
certificates say (chain, names, usages, validity), and every peer file a peer must refuse to
start with."""

from __future__ import annotations

import ipaddress
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tokenvault.cluster_init import InitError, init_cluster, renew_peer_certificates
from tokenvault.config import ConfigError, TlsConfig, load_config
from tokenvault.tls_certificates import (
    CA_VALIDITY_DAYS,
    NOT_BEFORE_BACKDATE_S,
    PEER_CERTIFICATE_VALIDITY_DAYS,
    IssuedCertificate,
    certificate_peer_id,
    issue_peer_certificate,
    load_peer_tls,
    new_certificate_authority,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
Extension = TypeVar("Extension", bound=x509.ExtensionType)


def load(issued: IssuedCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.certificate_pem)


def extension(certificate: x509.Certificate, kind: type[Extension]) -> x509.Extension[Extension]:
    return certificate.extensions.get_extension_for_class(kind)


def test_the_ca_is_self_signed_signs_only_peer_certificates_and_lasts_ten_years() -> None:
    issued = new_certificate_authority("local", now=NOW)
    ca = load(issued)
    ca.verify_directly_issued_by(ca)
    constraints = extension(ca, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = extension(ca, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.not_valid_before_utc == NOW - timedelta(seconds=NOT_BEFORE_BACKDATE_S)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=CA_VALIDITY_DAYS)
    assert CA_VALIDITY_DAYS == 3650
    assert issued.not_valid_after == ca.not_valid_after_utc
    other = load(new_certificate_authority("local", now=NOW))
    assert other.subject != ca.subject  # two clusters' CAs never share a name
    assert "PRIVATE KEY" not in repr(issued) and b"PRIVATE KEY" in issued.key_pem


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("[::1]", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("db1.example", x509.DNSName("db1.example")),
    ],
)
def test_a_peer_certificate_names_its_peer_and_host_and_serves_both_ends(
    host: str, name: x509.GeneralName
) -> None:
    ca = new_certificate_authority("local", now=NOW)
    certificate = load(issue_peer_certificate(ca, "n2", host, now=NOW))
    certificate.verify_directly_issued_by(load(ca))
    names = extension(certificate, x509.SubjectAlternativeName).value
    assert list(names) == [x509.UniformResourceIdentifier("tokenvault://peer/n2"), name]
    assert certificate_peer_id(certificate) == "n2"
    assert not extension(certificate, x509.BasicConstraints).value.ca
    assert set(extension(certificate, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert not extension(certificate, x509.KeyUsage).value.key_cert_sign
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == timedelta(days=PEER_CERTIFICATE_VALIDITY_DAYS) == timedelta(days=730)
    assert certificate.not_valid_before_utc < NOW


def test_the_ca_names_no_peer() -> None:
    assert certificate_peer_id(load(new_certificate_authority("local", now=NOW))) is None


@pytest.fixture
def tls(tmp_path: Path) -> TlsConfig:
    config = load_config(
        init_cluster(tmp_path / "c", nodes=3, base_port=7400, tls=True).config_path
    )
    assert config.tls is not None
    return config.tls


def test_init_writes_private_files_that_a_peer_starts_with(tls: TlsConfig) -> None:
    directory = tls.base / "tls"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [
        "ca.key", "ca.pem", "n1.key", "n1.pem", "n2.key", "n2.pem", "n3.key", "n3.pem",
    ]  # fmt: skip
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {0o600}
    now = datetime.now(UTC)
    for peer_id in ("n1", "n2", "n3"):
        peer = load_peer_tls(tls, peer_id, now=now)
        assert timedelta(days=729) < peer.not_valid_after - now <= timedelta(days=730)


def test_without_tls_init_writes_no_tls_files(tmp_path: Path) -> None:
    made = init_cluster(tmp_path, nodes=3, base_port=7400)
    assert made.tls_dir is None and not (tmp_path / "tls").exists()
    assert "[tls]" not in made.config_path.read_text()
    assert load_config(made.config_path).tls is None


def test_init_refuses_a_tls_directory_that_holds_files_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_text("someone else's")
    with pytest.raises(InitError, match=r"already holds files"):
        init_cluster(tmp_path, nodes=3, base_port=7400, tls=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ca.pem", "tls"]


def test_a_peer_refuses_another_peers_certificate(tls: TlsConfig) -> None:
    shutil.copy(tls.cert_path("n2"), tls.cert_path("n1"))
    shutil.copy(tls.key_path("n2"), tls.key_path("n1"))
    with pytest.raises(ConfigError, match=r"n1.pem is not peer n1's certificate .*peer 'n2'"):
        load_peer_tls(tls, "n1", now=datetime.now(UTC))


def test_a_peer_refuses_a_certificate_of_another_ca(tls: TlsConfig, tmp_path: Path) -> None:
    other = load_config(init_cluster(tmp_path / "o", nodes=3, base_port=7400, tls=True).config_path)
    assert other.tls is not None
    shutil.copy(other.tls.cert_path("n1"), tls.cert_path("n1"))
    shutil.copy(other.tls.key_path("n1"), tls.key_path("n1"))
    with pytest.raises(ConfigError, match=r"n1.pem was not issued by the CA in .*ca.pem"):
        load_peer_tls(tls, "n1", now=datetime.now(UTC))


def test_a_peer_refuses_a_certificate_outside_its_validity(tls: TlsConfig) -> None:
    after = load_peer_tls(tls, "n1", now=datetime.now(UTC)).not_valid_after
    with pytest.raises(ConfigError, match=r"n1.pem expired on"):
        load_peer_tls(tls, "n1", now=after)
    with pytest.raises(ConfigError, match=r"n1.pem is not valid before"):
        load_peer_tls(tls, "n1", now=datetime.now(UTC) - timedelta(days=1))


def test_a_peer_refuses_missing_or_unreadable_files(tls: TlsConfig) -> None:
    now = datetime.now(UTC)
    tls.key_path("n1").unlink()
    with pytest.raises(ConfigError, match=r"cannot read .*n1.key: No such file"):
        load_peer_tls(tls, "n1", now=now)
    tls.cert_path("n2").write_text("-----BEGIN NOTHING-----\n")
    with pytest.raises(ConfigError, match=r"n2.pem holds no PEM certificate"):
        load_peer_tls(tls, "n2", now=now)
    shutil.copy(tls.key_path("n2"), tls.key_path("n3"))
    with pytest.raises(ConfigError, match=r"n3.pem and .*n3.key are not a certificate and its key"):
        load_peer_tls(tls, "n3", now=now)


def test_renewal_replaces_the_chosen_peers_files_from_the_same_ca(tls: TlsConfig) -> None:
    before = {p: tls.cert_path(p).read_bytes() for p in ("n1", "n2", "n3")}
    config = load_config(tls.base / "cluster.toml")
    moved = config.path.read_text().replace('"127.0.0.1:7402"', '"db2.example:7402"')
    config.path.write_text(moved)

    renewed = renew_peer_certificates(load_config(config.path), ["n2"])

    assert [peer_id for peer_id, _ in renewed] == ["n2"]
    assert tls.cert_path("n1").read_bytes() == before["n1"]
    assert tls.cert_path("n2").read_bytes() != before["n2"]
    assert stat.S_IMODE(tls.key_path("n2").stat().st_mode) == 0o600
    peer = load_peer_tls(tls, "n2", now=datetime.now(UTC))  # same CA, matching key
    assert peer.not_valid_after == renewed[0][1]
    certificate = x509.load_pem_x509_certificate(tls.cert_path("n2").read_bytes())
    names = extension(certificate, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["db2.example"]
    assert sorted(p.name for p in (tls.base / "tls").iterdir() if p.name.startswith(".")) == []
    assert len(renew_peer_certificates(load_config(config.path))) == 3  # every peer by default


def test_renewal_needs_tls_on_a_known_peer_and_the_cas_key(tls: TlsConfig, tmp_path: Path) -> None:
    config = load_config(tls.base / "cluster.toml")
    with pytest.raises(ConfigError, match=r"no peer with id 'n9'"):
        renew_peer_certificates(config, ["n9"])
    foreign = new_certificate_authority("local", now=NOW)
    (tmp_path / "foreign.key").write_bytes(foreign.key_pem)
    with pytest.raises(ConfigError, match=r"foreign.key is the key of no CA certificate"):
        renew_peer_certificates(config, ca_key_path=tmp_path / "foreign.key")
    plain = load_config(init_cluster(tmp_path / "p", nodes=3, base_port=7400).config_path)
    with pytest.raises(ConfigError, match=r"has TLS off"):
        renew_peer_certificates(plain)


def test_a_peer_outside_the_file_gets_its_files_for_the_address_given(tls: TlsConfig) -> None:
    """A peer that joins (`node --join`): its files where `node` looks for them by its id."""
    config = load_config(tls.base / "cluster.toml")
    before = {p: tls.cert_path(p).read_bytes() for p in ("n1", "n2", "n3")}

    renewed = renew_peer_certificates(config, ["n4"], address="db4.example:7404")

    assert [peer_id for peer_id, _ in renewed] == ["n4"]
    assert {p: tls.cert_path(p).read_bytes() for p in ("n1", "n2", "n3")} == before
    assert stat.S_IMODE(tls.key_path("n4").stat().st_mode) == 0o600
    peer = load_peer_tls(tls, "n4", now=datetime.now(UTC))  # the cluster CA's, naming n4
    assert peer.not_valid_after == renewed[0][1]
    certificate = x509.load_pem_x509_certificate(tls.cert_path("n4").read_bytes())
    assert certificate_peer_id(certificate) == "n4"
    names = extension(certificate, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["db4.example"]


def test_an_address_is_for_one_new_peer_alone(tls: TlsConfig) -> None:
    config = load_config(tls.base / "cluster.toml")
    with pytest.raises(ConfigError, match=r"n2 is in .*cluster.toml: its certificate is for"):
        renew_peer_certificates(config, ["n2"], address="127.0.0.1:7409")
    with pytest.raises(ConfigError, match=r"an address is given for one peer"):
        renew_peer_certificates(config, ["n4", "n5"], address="127.0.0.1:7409")
    with pytest.raises(ConfigError, match=r"an address is given for one peer"):
        renew_peer_certificates(config, [], address="127.0.0.1:7409")
    with pytest.raises(ConfigError, match=r"'127.0.0.1' is not host:port"):
        renew_peer_certificates(config, ["n4"], address="127.0.0.1")
    with pytest.raises(ConfigError, match=r"'n/4' is no peer id"):
        renew_peer_certificates(config, ["n/4"], address="127.0.0.1:7409")
    assert not tls.cert_path("n4").exists() and not tls.cert_path("n5").exists()


def test_renewal_from_a_new_ca_appended_to_ca_file(tls: TlsConfig, tmp_path: Path) -> None:
    """operations.md's CA rotation, step 3: ca_file holds the old and the new CA."""
    new_ca = new_certificate_authority("local", now=datetime.now(UTC))
    (tmp_path / "new-ca.key").write_bytes(new_ca.key_pem)
    old_ca = tls.ca_path.read_bytes()
    tls.ca_path.write_bytes(old_ca + new_ca.certificate_pem)

    renew_peer_certificates(
        load_config(tls.base / "cluster.toml"), ca_key_path=tmp_path / "new-ca.key"
    )

    for peer_id in ("n1", "n2", "n3"):
        load_peer_tls(tls, peer_id, now=datetime.now(UTC))  # issued by a CA of ca_file
        issued = x509.load_pem_x509_certificate(tls.cert_path(peer_id).read_bytes())
        issued.verify_directly_issued_by(load(new_ca))
    tls.ca_path.write_bytes(old_ca)  # step 4 done too early: the old CA alone
    with pytest.raises(ConfigError, match=r"n1.pem was not issued by the CA"):
        load_peer_tls(tls, "n1", now=datetime.now(UTC))
