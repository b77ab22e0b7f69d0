"""The command line with TLS: init --tls, where client commands send their requests and which
CA they trust, node's checks of its own certificate, up --tls on an existing cluster, and
renew-certs. Requests go to httpx.MockTransport; the real handshakes are in
tests/http/test_tls_handshakes.py and tests/e2e/test_tls.py."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tokenvault.cli import main
from tokenvault.cli.target import target_of

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENVAULT_KEY", raising=False)


def init(directory: Path, *extra: str) -> int:
    return main(["init", "--nodes", "3", "--base-port", "7400", "--dir", str(directory), *extra])


def recorded(requests: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"owner": "alice", "epoch": 1})

    return httpx.MockTransport(handle)


def test_init_tls_says_where_the_certificates_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path / "c", "--tls") == 0
    out = capsys.readouterr().out
    assert f"  tls:     {tmp_path / 'c' / 'tls'}/  (mode 0600" in out
    assert "PRIVATE KEY" not in out


def test_client_commands_of_a_tls_cluster_use_https_and_its_ca(tmp_path: Path) -> None:
    assert init(tmp_path / "c", "--tls") == 0
    requests: list[httpx.Request] = []
    assert main(["epoch", "--dir", str(tmp_path / "c")], transport=recorded(requests)) == 0
    assert str(requests[0].url) == "https://127.0.0.1:7401/v1/epoch"
    target = target_of(connection(dir=tmp_path / "c"))
    assert target.ca_path == tmp_path / "c" / "tls" / "ca.pem"
    assert "ca.pem" in repr(target) and target.key not in repr(target)


def connection(**given: object) -> argparse.Namespace:
    options: dict[str, object] = {"url": None, "key": "k", "dir": None, "cacert": None}
    options |= {"owner": None, "admin": False, **given}
    return argparse.Namespace(**options)


@pytest.mark.parametrize(
    ("url", "cacert", "expected"),
    [
        ("10.0.0.1:7401", None, "http://10.0.0.1:7401"),
        ("10.0.0.1:7401", Path("ca.pem"), "https://10.0.0.1:7401"),  # a CA means TLS
        ("http://10.0.0.1:7401/", Path("ca.pem"), "http://10.0.0.1:7401"),  # as asked
        ("https://db1.example:7401", None, "https://db1.example:7401"),  # the system's CAs
    ],
)
def test_a_bare_address_gets_https_when_a_ca_is_known(
    url: str, cacert: Path | None, expected: str
) -> None:
    target = target_of(connection(url=url, cacert=cacert))
    assert (target.url, target.ca_path) == (expected, cacert)
    assert target.at("10.0.0.2:7402").url == expected.rpartition("//")[0] + "//10.0.0.2:7402"


def test_cacert_wins_over_the_cluster_ca_and_a_bad_one_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path / "c", "--tls") == 0
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    assert target_of(connection(dir=tmp_path / "c", cacert=bad)).ca_path == bad
    assert main(["epoch", "--dir", str(tmp_path / "c"), "--cacert", str(bad)]) == 2
    assert "bad.pem holds no usable CA certificate" in capsys.readouterr().err


def run_node(directory: Path, peer_id: str) -> subprocess.CompletedProcess[str]:
    """`tokenvault node` as its own process: a peer that passes its checks would serve."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenvault",
            "node",
            "--config",
            str(directory / "cluster.toml"),
            "--id",
            peer_id,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_node_refuses_to_start_with_a_missing_or_foreign_certificate(tmp_path: Path) -> None:
    assert init(tmp_path / "c", "--tls") == 0
    tls_dir = tmp_path / "c" / "tls"
    (tls_dir / "n1.key").unlink()
    shutil.copy(tls_dir / "n3.pem", tls_dir / "n2.pem")
    missing, foreign = run_node(tmp_path / "c", "n1"), run_node(tmp_path / "c", "n2")
    assert missing.returncode == foreign.returncode == 2
    assert missing.stderr.startswith("tokenvault: [tls]: cannot read ")
    assert "n1.key: No such file or directory" in missing.stderr
    assert "n2.pem is not peer n2's certificate (it names peer 'n3')" in foreign.stderr
    assert len(missing.stderr.splitlines()) == len(foreign.stderr.splitlines()) == 1


def test_up_tls_refuses_an_existing_cluster_without_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path / "c") == 0
    assert main(["up", "--dir", str(tmp_path / "c"), "--tls"]) == 2
    err = capsys.readouterr().err
    assert "has TLS off, and --tls only shapes a new cluster" in err
    assert not (tmp_path / "c" / "logs").exists()  # no peer was started


def test_renew_certs_replaces_the_chosen_peers_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path / "c", "--tls") == 0
    tls_dir = tmp_path / "c" / "tls"
    before = {name: (tls_dir / name).read_bytes() for name in ("n1.pem", "n2.pem", "n2.key")}
    capsys.readouterr()

    assert main(["renew-certs", "--dir", str(tmp_path / "c"), "--peer", "n2"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"peer n2: {tls_dir / 'n2.pem'} and {tls_dir / 'n2.key'}, valid")
    assert out[1].startswith("peers read their certificates at start: restart them")
    assert (tls_dir / "n1.pem").read_bytes() == before["n1.pem"]
    assert (tls_dir / "n2.pem").read_bytes() != before["n2.pem"]
    assert (tls_dir / "n2.key").read_bytes() != before["n2.key"]


def test_renew_certs_with_an_address_issues_a_joining_peers_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path / "c", "--tls") == 0
    tls_dir = tmp_path / "c" / "tls"
    capsys.readouterr()
    command = ["renew-certs", "--dir", str(tmp_path / "c"), "--peer", "n4"]

    assert main([*command, "--address", "127.0.0.1:7404"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"peer n4: {tls_dir / 'n4.pem'} and {tls_dir / 'n4.key'}, valid")
    assert out[1] == (
        f"start it with: tokenvault node --config {tmp_path / 'c' / 'cluster.toml'} --id n4"
        " --address 127.0.0.1:7404 --join"
    )
    assert (tls_dir / "n4.pem").exists() and (tls_dir / "n4.key").exists()
    assert main([*command[:-1], "n1", "--address", "127.0.0.1:7404"]) == 2
    assert "renew-certs: n1 is in " in capsys.readouterr().err


def test_renew_certs_of_a_cluster_without_tls_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path / "c") == 0
    assert main(["renew-certs", "--dir", str(tmp_path / "c")]) == 2
    assert "renew-certs: " in capsys.readouterr().err


def test_the_command_line_starts_without_cryptography() -> None:
    """Only init --tls, renew-certs and a peer need it: client commands start without it."""
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, tokenvault.cli; print('cryptography' in sys.modules)"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert completed.stdout.strip() == "False"
