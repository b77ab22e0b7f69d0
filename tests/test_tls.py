"""tls.py and the [tls] section of cluster.toml it serves: which peer a certificate names, the
contexts' settings, and every bad [tls] refused with a message that names the problem."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from tokenvault.cluster_init import init_cluster
from tokenvault.config import ConfigError, TlsConfig, load_config
from tokenvault.tls import (
    client_context,
    peer_id_of_certificate,
    peer_link_context,
    peer_uri,
    server_context,
)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    made = init_cluster(tmp_path_factory.mktemp("c"), nodes=3, base_port=7400, tls=True)
    config = load_config(made.config_path)
    assert config.tls is not None
    return config.tls


def certificate(*alternative_names: tuple[str, str]) -> dict[str, Any]:
    """The shape of SSLObject.getpeercert() for a verified certificate."""
    return {"subject": ((("commonName", "n1"),),), "subjectAltName": alternative_names}


@pytest.mark.parametrize(
    ("names", "peer_id"),
    [
        ((("URI", "tokenvault://peer/n1"), ("IP Address", "127.0.0.1")), "n1"),
        ((("DNS", "db1.example"), ("URI", "tokenvault://peer/node_2-b")), "node_2-b"),
        ((("IP Address", "127.0.0.1"),), None),  # no peer URI: a public server's certificate
        ((("URI", "tokenvault://peer/n1"), ("URI", "tokenvault://peer/n2")), None),  # two
        ((("URI", "tokenvault://peer/"),), None),  # an empty id
        ((("URI", "tokenvault://peer/n1/x"),), None),  # not a peer id
        ((("URI", "https://peer/n1"),), None),  # another scheme
        ((("DNS", "tokenvault://peer/n1"),), None),  # a DNS name that looks like one
    ],
)
def test_a_certificate_names_a_peer_only_by_its_one_peer_uri(
    names: tuple[tuple[str, str], ...], peer_id: str | None
) -> None:
    assert peer_id_of_certificate(certificate(*names)) == peer_id


def test_no_certificate_names_no_peer() -> None:
    assert peer_id_of_certificate(None) is None
    assert peer_id_of_certificate({}) is None  # getpeercert() of a client that sent none
    assert peer_uri("n7") == "tokenvault://peer/n7"


def test_contexts_verify_as_the_rules_say(tls: TlsConfig) -> None:
    files = {
        "ca_path": tls.ca_path,
        "cert_path": tls.cert_path("n1"),
        "key_path": tls.key_path("n1"),
    }
    server = server_context(**files)
    assert server.verify_mode == ssl.CERT_OPTIONAL  # public clients have no certificate
    assert server.num_tickets == 0
    link = peer_link_context(**files)
    assert link.verify_mode == ssl.CERT_REQUIRED and not link.check_hostname
    public = client_context(tls.ca_path)
    assert public.verify_mode == ssl.CERT_REQUIRED and public.check_hostname
    for context in (server, link, public):
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
        # the cluster CA and nothing else: no system certificates
        assert [c["subject"] for c in context.get_ca_certs()] == [
            c["subject"] for c in public.get_ca_certs()
        ]
        assert len(context.get_ca_certs()) == 1


def test_unusable_files_are_config_errors_naming_them(tls: TlsConfig, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"garbage.pem holds no usable CA certificate"):
        client_context(garbage)
    with pytest.raises(ConfigError, match=r"cannot read the CA certificate .*missing.pem"):
        client_context(tmp_path / "missing.pem")
    mismatched = {
        "ca_path": tls.ca_path,
        "cert_path": tls.cert_path("n1"),
        "key_path": tls.key_path("n2"),
    }
    with pytest.raises(ConfigError, match=r"n1.pem and .*n2.key are not a certificate and its key"):
        server_context(**mismatched)


def test_init_tls_writes_a_tls_section_that_load_config_reads(tls: TlsConfig) -> None:
    assert tls.ca_path == tls.base / "tls" / "ca.pem"
    assert tls.cert_path("n2") == tls.base / "tls" / "n2.pem"
    assert tls.key_path("n2") == tls.base / "tls" / "n2.key"


def config_with(directory: Path, tls_section: str) -> Path:
    made = init_cluster(directory, nodes=1, base_port=7400, replicas=1, write_quorum=1,
                        read_quorum=1)  # fmt: skip
    made.config_path.write_text(made.config_path.read_text() + "\n" + tls_section)
    return made.config_path


def test_no_section_or_enabled_false_is_plain_http(tmp_path: Path) -> None:
    assert load_config(config_with(tmp_path / "a", "")).tls is None
    off = config_with(tmp_path / "b", '[tls]\nenabled = false\nca_file = "missing.pem"\n')
    assert load_config(off).tls is None  # files of a disabled section are not looked at


def test_defaults_and_a_shared_path_without_placeholder(tmp_path: Path) -> None:
    path = config_with(tmp_path, '[tls]\ncert_file = "/etc/tv/peer.pem"\n')
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_text("")
    tls = load_config(path).tls
    assert tls is not None
    assert tls.ca_path == tmp_path / "tls" / "ca.pem"
    assert tls.cert_path("n1") == tls.cert_path("n2") == Path("/etc/tv/peer.pem")
    assert tls.key_path("n1") == tmp_path / "tls" / "n1.key"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[[tls]]\n", r"no \[tls\] table"),
        ('[tls]\nenabled = "yes"\n', r"\[tls\] enabled must be true or false"),
        ("[tls]\nca_file = 3\n", r"\[tls\] ca_file must be a path"),
        ('[tls]\ncert_file = ""\n', r"\[tls\] cert_file must be a path"),
        ("[tls]\nkey_file = []\n", r"\[tls\] key_file must be a path"),
        ("[tls]\n", r"\[tls\] ca_file: cannot read .*tls/ca.pem: No such file"),
    ],
)
def test_a_bad_tls_section_is_refused_with_its_problem(
    tmp_path: Path, section: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(config_with(tmp_path, section))
