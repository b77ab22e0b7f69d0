"""End-to-end: a cluster made by `init --tls`, on real processes: HTTPS with the cluster CA
works (curl and the command line), plain HTTP to the same port fails quietly, the peer
endpoint needs a peer certificate that names the batch's source, and `up` runs either kind of
cluster with the right banner. Every cluster here is TLS, whatever TOKENVAULT_E2E_TLS says,
except `up`'s, which runs in each mode of the suite."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Cluster, free_port_block, running_cluster
from tests.e2e.test_cluster import tokenize
from tokenvault.cli import main
from tokenvault.config import cluster_fingerprint, load_config
from tokenvault.http.peer_auth import PeerSigner, new_incarnation
from tokenvault.http.peer_codec import encode_batch
from tokenvault.http.peer_transport import PEER_MESSAGES_PATH
from tokenvault.tokens import derive_peer_key

pytestmark = pytest.mark.e2e

UP_BANNER_TIMEOUT_S = 40.0
UP_STOP_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("tls")) / "cluster", tls=True) as running:
        yield running


CURL = shutil.which("curl")


def curl(*arguments: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--max-time", "10", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def post(url: str, key: str, body: str, ca_path: Path | None) -> tuple[int | None, str]:
    """(status, body) of a POST by curl when it is installed, else by httpx; (None, error)
    when no HTTP answer came back at all."""
    if CURL is not None:
        trust = [] if ca_path is None else ["--cacert", str(ca_path)]
        done = curl(*trust, "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {key}",
                    "-d", body, url)  # fmt: skip
        if done.returncode != 0:
            return None, f"curl exit {done.returncode}: {done.stderr}"
        text, _, status = done.stdout.rpartition("\n")
        return int(status), text
    verify: ssl.SSLContext | bool = (
        True if ca_path is None else ssl.create_default_context(cafile=ca_path)
    )
    try:
        answer = httpx.post(
            url, headers={"Authorization": f"Bearer {key}"}, content=body, verify=verify
        )
    except httpx.HTTPError as error:
        return None, f"{type(error).__name__}: {error}"
    return answer.status_code, answer.text


def test_https_with_the_ca_works_and_plain_http_to_the_same_port_fails(
    tls_cluster: Cluster,
) -> None:
    url = tls_cluster.url("n1")
    assert url.startswith("https://")
    key = tls_cluster.owner_keys["alice"]
    body = json.dumps({"records": [{"ssn": "123-45-6789"}]})
    status, text = post(f"{url}/v1/tokenize", key, body, tls_cluster.ca_path)
    assert status == 200, text
    assert json.loads(text)["records"][0]["ssn"].startswith("tok_")

    plain_url = url.replace("https://", "http://", 1) + "/v1/tokenize"
    status, text = post(plain_url, key, body, None)
    assert status is None, text  # no answer of any kind
    status, text = post(f"{url}/v1/tokenize", key, body, None)  # the system's CAs only
    assert status is None and "certificate" in text.lower(), text

    failures = wait_for_events(tls_cluster, "n1", "tls_handshake_failed", 1)
    assert failures[0]["level"] == "info"
    assert "Traceback" not in tls_cluster.log("n1")


def test_peers_talk_mutual_tls_and_say_so_at_start(tls_cluster: Cluster) -> None:
    for peer in tls_cluster.peer_ids:
        start = next(e for e in tls_cluster.log_events(peer) if e["event"] == "peer_start")
        assert start["tls"] is True
        certificate = next(
            e for e in tls_cluster.log_events(peer) if e["event"] == "tls_certificate"
        )
        assert 720 <= int(str(certificate["expires_in_days"])) <= 730
    # a write needs W=2 replicas: the peers reached each other over their links
    answer = tokenize(tls_cluster, "n2", "bob", [{"email": "b@example.com"}])
    assert answer.status_code == 200, answer.text


def peer_client_context(cluster: Cluster, peer_id: str | None) -> ssl.SSLContext:
    """HTTPS to the cluster, presenting peer_id's own certificate (none when None)."""
    assert cluster.ca_path is not None
    context = ssl.create_default_context(cafile=cluster.ca_path)
    if peer_id is not None:
        tls_dir = cluster.ca_path.parent
        context.load_cert_chain(tls_dir / f"{peer_id}.pem", tls_dir / f"{peer_id}.key")
    return context


@pytest.mark.parametrize(
    ("certificate", "source", "status"),
    [
        (None, "n2", 401),  # a valid signature alone, as a public client: refused
        ("n1", "n2", 400),  # n1's certificate on a batch that says it is from n2
        ("n2", "n2", 204),  # the real thing
    ],
)
def test_the_peer_endpoint_needs_the_certificate_of_the_batchs_source(
    tls_cluster: Cluster, certificate: str | None, source: str, status: int
) -> None:
    config = load_config(tls_cluster.init.config_path)
    signer = PeerSigner(  # a batch correctly signed by `source` (its key, for n3)
        sender=source,
        receiver="n3",
        key=derive_peer_key(config.secret, source),
        incarnation=new_incarnation(),
        fingerprint=cluster_fingerprint(config),
    )
    body = encode_batch(source, [])
    answer = httpx.post(
        tls_cluster.url("n3") + PEER_MESSAGES_PATH,
        headers=(
            *signer.headers("POST", PEER_MESSAGES_PATH, body),
            ("content-type", "application/json"),
        ),
        content=body,
        timeout=10,
        verify=peer_client_context(tls_cluster, certificate),
    )
    assert answer.status_code == status, answer.text
    if status == 401:
        assert "with their certificate" in answer.json()["error"]["message"]


def test_client_commands_use_the_ca_of_the_cluster_directory(
    tls_cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = ["--dir", str(tls_cluster.directory)]
    assert main(["tokenize", *directory, "987-65-4321"]) == 0
    assert json.loads(capsys.readouterr().out)["records"][0]["ssn"].startswith("tok_")
    # asks every peer, over HTTPS; exit 0 once the third replica has the write too
    deadline = time.monotonic() + 10.0
    while main(["status", *directory]) != 0:
        assert time.monotonic() < deadline, capsys.readouterr().out
        time.sleep(0.2)
    status = capsys.readouterr().out.split("as seen by ")[-1].splitlines()
    assert [line.split()[2] for line in status[2:5]] == ["up", "up", "up"]
    address = tls_cluster.url("n2").removeprefix("https://")
    key = ["--key", tls_cluster.admin_key]
    assert main(["ring", "--url", address, *key, *tls_cluster.cacert_options()]) == 0
    assert json.loads(capsys.readouterr().out)["peer"] == "n2"
    assert main(["ring", "--url", f"https://{address}", *key]) == 1  # no CA: not trusted
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err


def wait_for_events(cluster: Cluster, peer: str, event: str, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10.0
    while True:
        found = [e for e in cluster.log_events(peer) if e["event"] == event]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{peer} logged {len(found)} {event}"
            return found
        time.sleep(0.05)


# -- up ----------------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is pid (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def read_until(process: subprocess.Popen[str], line_end: str, timeout_s: float) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.rstrip("\n").endswith(line_end):
            return lines
    raise AssertionError(f"no {line_end!r} from up; it said: {lines}")


def test_up_runs_the_cluster_with_the_banner_of_its_mode(tmp_path: Path, tls_mode: bool) -> None:
    directory = tmp_path / "up-cluster"
    command = [sys.executable, "-m", "tokenvault", "up", "--dir", str(directory),
               "--base-port", str(free_port_block(3))]  # fmt: skip
    if tls_mode:
        command.append("--tls")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    peers: list[int] = []
    try:
        banner = read_until(process, "Ctrl-C stops every peer.", UP_BANNER_TIMEOUT_S)
        peers = child_pids(process.pid)
        assert len(peers) == 3
        urls = [line.split()[1] for line in banner if line.startswith("  n")]
        assert len(urls) == 3
        warnings = [line for line in banner if line.startswith("WARNING")]
        curl_line = next(line for line in banner if "curl" in line)
        if tls_mode:
            assert all(url.startswith("https://") for url in urls)
            assert warnings == []
            assert f"--cacert {directory / 'tls' / 'ca.pem'} https://" in curl_line
        else:
            assert all(url.startswith("http://") for url in urls)
            assert warnings == [
                "WARNING: plain HTTP: API keys, values and tokens cross the network unencrypted;"
                " for TLS, start a new cluster with --tls"
            ]
        keys = json.loads((directory / "keys.json").read_text())
        assert not [key for key in keys["owners"].values() if key in "\n".join(banner)]
        key_line = next(line for line in banner if line.startswith("  KEY="))
        if CURL is not None:  # the banner's own example works, as printed, from anywhere
            tokenized = subprocess.run(
                f"{key_line.strip()}\n{curl_line.strip()}",
                shell=True,
                capture_output=True,
                text=True,
                timeout=30,
                cwd=tmp_path,
            )
            assert '"epoch":1' in tokenized.stdout, tokenized.stderr
        cli_line = next(line for line in banner if " tokenize --dir " in line)
        by_cli = subprocess.run(
            cli_line.strip(), shell=True, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert '"epoch": 1' in by_cli.stdout, by_cli.stderr
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=UP_STOP_TIMEOUT_S) == 0
        assert process.stdout is not None
        assert "stopped every peer" in process.stdout.read()
    finally:
        if process.poll() is None:  # up failed to stop: kill it, then the peers it left
            process.kill()
            process.wait(timeout=10)
            for pid in peers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if process.stdout is not None:
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
