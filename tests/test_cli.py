"""The command line: init's output and refusals, and the client commands' requests and errors.

Client commands run against httpx.MockTransport (no sockets), except the unreachable-peer cases,
which use a port from a socket closed just before.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tokenvault.cli import main
from tokenvault.cluster_init import load_keys

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENVAULT_KEY", raising=False)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class FakePeer:
    """Answers like a peer would, and remembers every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: dict[tuple[str, str], httpx.Response] = {}

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(200, json={"echo": request.url.path})
        return answer

    def only_request(self) -> httpx.Request:
        assert len(self.requests) == 1
        return self.requests[0]


@pytest.fixture
def peer() -> FakePeer:
    return FakePeer()


def _init(directory: Path, *extra: str) -> int:
    return main(["init", "--nodes", "3", "--base-port", "7400", "--dir", str(directory), *extra])


# -- init --------------------------------------------------------------------------------------


def test_init_writes_a_cluster_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cluster"
    assert _init(directory) == 0

    out = capsys.readouterr().out
    assert str(directory / "cluster.toml") in out
    assert str(directory / "keys.json") in out
    for peer_id in ("n1", "n2", "n3"):
        assert str(directory / "data" / peer_id) in out
    assert "127.0.0.1:7401" in out
    keys = load_keys(directory / "keys.json")
    assert not any(key in out for key in (keys.admin, *keys.owners.values()))


def test_init_owners_option(tmp_path: Path) -> None:
    assert _init(tmp_path, "--owners", "acme, globex") == 0
    assert list(load_keys(tmp_path / "keys.json").owners) == ["acme", "globex"]


def test_second_init_exits_1_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path) == 0
    before = (tmp_path / "keys.json").read_bytes()
    capsys.readouterr()

    assert _init(tmp_path) == 1

    err = capsys.readouterr().err
    assert "already exists" in err
    assert err.count("\n") == 1
    assert (tmp_path / "keys.json").read_bytes() == before


@pytest.mark.parametrize(
    "bad",
    [
        ["--replicas", "5"],
        ["--owners", "alice,alice"],
        ["--owners", "no spaces"],
        ["--write-quorum", "1"],
    ],
)
def test_init_with_bad_parameters_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: list[str]
) -> None:
    """Bad usage is exit code 2, as docs/api.md says (it was 1: issue 13, item 8)."""
    directory = tmp_path / "cluster"
    assert _init(directory, *bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenvault: init: ") and err.count("\n") == 1
    assert not directory.exists()


def test_init_with_too_many_nodes_or_ports_out_of_range_exits_2(tmp_path: Path) -> None:
    assert main(["init", "--nodes", "300", "--base-port", "7400", "--dir", str(tmp_path)]) == 2
    assert main(["init", "--nodes", "3", "--base-port", "65534", "--dir", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_init_with_a_non_number_exits_2(tmp_path: Path) -> None:
    assert _init(tmp_path / "cluster", "--replicas", "many") == 2
    assert not (tmp_path / "cluster").exists()


def test_python_dash_m_runs_the_command_line() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tokenvault", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0
    assert "tokenize" in completed.stdout


# -- client commands ---------------------------------------------------------------------------


def test_tokenize_sends_one_record_per_value(
    peer: FakePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {"epoch": 1, "records": [{"email": "tok_a"}, {"email": "tok_b"}]}
    peer.answers["POST", "/v1/tokenize"] = httpx.Response(200, json=answer)

    code = main(
        ["tokenize", "--url", "127.0.0.1:7401", "--key", "k1", "--field", "email", "a", "b"],
        transport=peer.transport(),
    )

    assert code == 0
    request = peer.only_request()
    assert str(request.url) == "http://127.0.0.1:7401/v1/tokenize"
    assert request.headers["authorization"] == "Bearer k1"
    assert json.loads(request.content) == {"records": [{"email": "a"}, {"email": "b"}]}
    assert json.loads(capsys.readouterr().out) == answer


def test_tokenize_raw_body_from_json_and_file(tmp_path: Path, peer: FakePeer) -> None:
    body = '{"records": [{"ssn": "1", "note": "x"}]}'
    body_file = tmp_path / "body.json"
    body_file.write_text(body)
    connection = ["--url", "http://h:1", "--key", "k"]

    assert main(["tokenize", *connection, "--json", body], transport=peer.transport()) == 0
    assert (
        main(["tokenize", *connection, "--file", str(body_file)], transport=peer.transport()) == 0
    )

    assert [json.loads(r.content) for r in peer.requests] == [json.loads(body)] * 2


def test_tokenize_refuses_invalid_json_without_sending(
    peer: FakePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["tokenize", "--url", "h:1", "--key", "k", "--json", "{nope"], transport=peer.transport()
    )
    assert code == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert peer.requests == []


def test_detokenize_rotate_epoch_and_ring_requests(peer: FakePeer) -> None:
    connection = ["--url", "http://h:1/", "--key", "k"]
    commands = [
        ["detokenize", "tok_a", "tok_b"],
        ["rotate", "--expected-epoch", "3"],
        ["rotate"],
        ["epoch"],
        ["ring"],
        ["ring", "--owner", "alice"],
    ]
    for command in commands:
        assert main([*command, *connection], transport=peer.transport()) == 0

    sent = [(r.method, r.url.path, r.content) for r in peer.requests]
    assert sent == [
        ("POST", "/v1/detokenize", b'{"tokens": ["tok_a", "tok_b"]}'),
        ("POST", "/v1/epoch/rotate", b'{"expected_epoch": 3}'),
        ("POST", "/v1/epoch/rotate", b""),
        ("GET", "/v1/epoch", b""),
        ("GET", "/v1/ring", b""),
        ("GET", "/v1/ring/owners/alice", b""),
    ]


def test_error_answer_prints_its_message_and_exits_1(
    peer: FakePeer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("time.sleep", sleeps.append)
    error = {"error": {"code": "unavailable", "message": "Too few replicas answered in time."}}
    peer.answers["GET", "/v1/epoch"] = httpx.Response(503, json=error, headers={"Retry-After": "2"})

    code = main(["epoch", "--url", "h:1", "--key", "k"], transport=peer.transport())

    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "503 unavailable: Too few replicas answered in time." in captured.err
    assert "retry after 2 s" in captured.err
    assert captured.err.count("\n") == 1
    # a 503 is retried, as the library's policy says: 5 attempts, each after its Retry-After
    assert len(peer.requests) == 5
    assert len(sleeps) == 4 and all(1.9 < s <= 2.0 for s in sleeps)


def test_a_client_error_answer_is_not_retried(
    peer: FakePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {"error": {"code": "unauthenticated", "message": "The key is not known."}}
    peer.answers["GET", "/v1/epoch"] = httpx.Response(401, json=error)

    assert main(["epoch", "--url", "h:1", "--key", "k"], transport=peer.transport()) == 1
    assert len(peer.requests) == 1
    assert "401 unauthenticated: The key is not known." in capsys.readouterr().err


def test_dir_picks_the_first_peer_and_the_chosen_key(tmp_path: Path, peer: FakePeer) -> None:
    assert _init(tmp_path) == 0
    keys = load_keys(tmp_path / "keys.json")
    connection = ["--dir", str(tmp_path)]

    assert main(["epoch", *connection], transport=peer.transport()) == 0
    assert main(["epoch", *connection, "--owner", "bob"], transport=peer.transport()) == 0
    assert main(["epoch", *connection, "--admin"], transport=peer.transport()) == 0
    assert main(["ring", *connection, "--owner", "bob", "--admin"], transport=peer.transport()) == 0

    assert {str(r.url.host) + ":" + str(r.url.port) for r in peer.requests} == {"127.0.0.1:7401"}
    assert [r.headers["authorization"] for r in peer.requests] == [
        f"Bearer {keys.owners['alice']}",
        f"Bearer {keys.owners['bob']}",
        f"Bearer {keys.admin}",
        f"Bearer {keys.admin}",
    ]
    assert peer.requests[-1].url.path == "/v1/ring/owners/bob"


def test_dir_with_an_unknown_owner_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path) == 0
    assert main(["epoch", "--dir", str(tmp_path), "--owner", "mallory"]) == 2
    assert "mallory" in capsys.readouterr().err


def test_status_prints_a_table_of_peers_with_the_admin_key(
    tmp_path: Path, peer: FakePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path) == 0
    capsys.readouterr()
    ring = {
        "peer": "n1",
        "version": "abc",
        "replicas": 3,
        "write_quorum": 2,
        "read_quorum": 2,
        "peers": [
            {"id": "n1", "address": "127.0.0.1:7401", "state": "up", "for_s": 12.5},
            {"id": "n2", "address": "127.0.0.1:7402", "state": "suspect", "for_s": 1.0},
            {"id": "n3", "address": "127.0.0.1:7403", "state": "down", "for_s": 30.0},
        ],
    }
    peer.answers["GET", "/v1/ring"] = httpx.Response(200, json=ring)
    peer.answers["GET", "/v1/admin/node"] = httpx.Response(
        200,
        json={
            "peer": "n1",
            "owners": ["alice"],
            "hints": [{"target": "n3", "hints": 4, "bytes": 100, "in_flight": 0}],
            "anti_entropy": {"last_pass": {"outcome": "in_sync", "finished_s_ago": 2.0}},
            "state": "recovering",
            "recovery": {
                "phase": "recovering",
                "owners_total": 2,
                "owners_learned": 2,
                "owners_refilled": 1,
            },
        },
    )
    peer.answers["GET", "/v1/admin/owners/alice"] = httpx.Response(
        200,
        json={
            "owner": "alice",
            "converged": False,
            "replicas": [
                {"peer": "n1", "reachable": True, "active_epoch": 2, "token_count": 7},
                {"peer": "n3", "reachable": False},
            ],
        },
    )

    # exit 3 (docs/api.md): a peer is not up (here every peer says it is recovering)
    assert main(["status", "--dir", str(tmp_path)], transport=peer.transport()) == 3

    admin_key = load_keys(tmp_path / "keys.json").admin
    assert {r.headers["authorization"] for r in peer.requests} == {f"Bearer {admin_key}"}
    # the ring once, every peer's own view, then each owner's convergence
    assert {r.url.port for r in peer.requests if r.url.path == "/v1/admin/node"} == {
        7401,
        7402,
        7403,
    }
    lines = capsys.readouterr().out.splitlines()
    assert "N=3 W=2 R=2" in lines[0]
    assert lines[1].split() == [
        "ID",
        "ADDRESS",
        "STATE",
        "FOR",
        "SERVING",
        "HINTS",
        "HELD",
        "ANTI-ENTROPY",
    ]
    # each peer's own state (recovering) comes before what the others hold of it
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["n1", "127.0.0.1:7401", "recovering"],
        ["n2", "127.0.0.1:7402", "recovering"],
        ["n3", "127.0.0.1:7403", "recovering"],
    ]
    assert "4 for n3" in lines[2] and "in_sync 2s ago" in lines[2]
    assert "recovering (recovering: learned 2/2, refilled 1/2)" in lines[2]
    assert lines[6].split() == [
        "OWNER",
        "CONVERGED",
        "REPLICA",
        "ANSWERED",
        "EPOCH",
        "TOKENS",
        "DIGEST",
        "HINTS",
        "FOR",
        "IT",
    ]
    # one row per replica; the hints for n3: 4 held by each of the three peers
    assert lines[7].split() == ["alice", "NO", "n1", "yes", "2", "7", "-", "0"]
    assert lines[8].split() == ["alice", "NO", "n3", "no", "-", "-", "-", "12"]


def test_status_with_an_owner_key_shows_the_ring_only(
    tmp_path: Path, peer: FakePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path) == 0
    capsys.readouterr()
    ring = {"peer": "n1", "peers": [{"id": "n1", "address": "127.0.0.1:7401", "state": "up"}]}
    peer.answers["GET", "/v1/ring"] = httpx.Response(200, json=ring)
    peer.answers["GET", "/v1/admin/node"] = httpx.Response(
        403, json={"error": {"code": "forbidden", "message": "Only the admin key may see this."}}
    )
    assert (
        main(["status", "--dir", str(tmp_path), "--owner", "alice"], transport=peer.transport())
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["ID", "ADDRESS", "STATE", "FOR"]
    assert len(lines) == 5  # the ring line, the table, then the verdict after a blank line
    assert lines[4].startswith("healthy (exit 0)")


def test_client_without_url_or_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["epoch", "--url", "h:1"]) == 2
    assert "--key" in capsys.readouterr().err


def test_key_from_the_environment(peer: FakePeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENVAULT_KEY", "from-env")
    assert main(["epoch", "--url", "h:1"], transport=peer.transport()) == 0
    assert peer.only_request().headers["authorization"] == "Bearer from-env"


def test_unreachable_peer_exits_1_with_a_message(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["tokenize", "--url", f"http://127.0.0.1:{closed_port}", "--key", "k", "v"])

    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot connect to http://127.0.0.1:{closed_port}" in captured.err
    assert captured.err.count("\n") == 1


def test_unreachable_cluster_from_dir_exits_1_without_showing_the_key(
    tmp_path: Path, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    one_peer = ["--nodes", "1", "--replicas", "1", "--write-quorum", "1", "--read-quorum", "1"]
    base_port = str(closed_port - 1)
    assert main(["init", *one_peer, "--base-port", base_port, "--dir", str(tmp_path)]) == 0
    capsys.readouterr()

    assert main(["status", "--dir", str(tmp_path)]) == 1

    err = capsys.readouterr().err
    assert "cannot connect" in err
    assert load_keys(tmp_path / "keys.json").admin not in err


def test_the_command_line_loads_neither_the_peer_nor_the_simulator() -> None:
    """`node` and `sim` import their code lazily: the client commands start without it."""
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tokenvault.cli; print(' '.join(sorted(sys.modules)))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(completed.stdout.split())
    assert "tokenvault.cli.parser" in loaded
    lazy: tuple[str, ...] = (
        "tokenvault.peer_process",
        "tokenvault.node",
        "tokenvault.sim",
        "trio",
        "plyvel",
    )
    lazy += ("tokenvault.cli.bench.command",)
    assert sorted(module for module in loaded if module.startswith(lazy)) == []


# -- failover, verbose, fields the owner lacks (issue 13) ---------------------------------------


class DeadFirstPeer(FakePeer):
    """Port 7401 refuses connections (or times out); the other peers answer like FakePeer."""

    def __init__(self, failure: type[httpx.TransportError] = httpx.ConnectError) -> None:
        super().__init__()
        self.failure = failure

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.port == 7401:
            self.requests.append(request)
            raise self.failure("[Errno 111] Connection refused", request=request)
        return super()._handle(request)


def test_dir_tries_every_peer_in_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    assert _init(tmp_path) == 0
    capsys.readouterr()
    peer = DeadFirstPeer()
    commands = [
        ["tokenize", "v"],
        ["detokenize", "tok_a"],
        ["rotate", "--expected-epoch", "1"],
        ["rotate"],  # never sent to 7401: safe to send elsewhere
        ["epoch"],
        ["ring"],
        ["ring", "--owner", "bob", "--admin"],
    ]
    peer.answers["POST", "/v1/tokenize"] = httpx.Response(
        200, json={"epoch": 1, "fields_left": [], "records": [{"ssn": "tok_v"}]}
    )
    for command in commands:
        assert main([*command, "--dir", str(tmp_path)], transport=peer.transport()) == 0, command
    ports = [r.url.port for r in peer.requests]
    assert ports == [7401, 7402] * len(commands)
    assert capsys.readouterr().err == ""  # quiet without -v


def test_verbose_says_which_peer_answered_and_which_attempts_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    assert _init(tmp_path) == 0
    capsys.readouterr()
    assert main(["epoch", "--dir", str(tmp_path), "-v"], transport=DeadFirstPeer().transport()) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("tokenvault: attempt 1: cannot connect to http://127.0.0.1:7401: ")
    assert err[0].endswith("next attempt: http://127.0.0.1:7402 in 0.0 s")
    assert err[1] == "tokenvault: attempt 2: http://127.0.0.1:7402 answered"
    keys = load_keys(tmp_path / "keys.json")
    assert keys.owners["alice"] not in "".join(err)


def test_a_blind_rotate_is_not_sent_again_after_a_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(tmp_path) == 0
    peer = DeadFirstPeer(httpx.ReadTimeout)
    assert main(["rotate", "--dir", str(tmp_path)], transport=peer.transport()) == 1
    assert [r.url.port for r in peer.requests] == [7401]
    assert "no answer from http://127.0.0.1:7401 within 10 s" in capsys.readouterr().err
    assert (
        main(
            ["rotate", "--dir", str(tmp_path), "--expected-epoch", "2"], transport=peer.transport()
        )
        == 0
    )
    assert [r.url.port for r in peer.requests] == [7401, 7401, 7402]


@pytest.mark.parametrize("who", [["--owner", "bob"], ["--key", "BOB"]])
def test_tokenize_refuses_a_field_the_owner_lacks_before_sending(
    tmp_path: Path, peer: FakePeer, capsys: pytest.CaptureFixture[str], who: list[str]
) -> None:
    assert _init(tmp_path) == 0
    capsys.readouterr()
    who = [load_keys(tmp_path / "keys.json").owners["bob"] if w == "BOB" else w for w in who]
    code = main(
        ["tokenize", "--dir", str(tmp_path), *who, "--field", "phone", "555-1234"],
        transport=peer.transport(),
    )
    assert code == 2
    captured = capsys.readouterr()
    assert peer.requests == [] and captured.out == ""
    assert "owner bob has no field 'phone'" in captured.err
    assert "card_number, email, ssn" in captured.err and "555-1234" not in captured.err


def test_tokenize_with_url_only_refuses_an_answer_that_left_the_field_as_given(
    peer: FakePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    peer.answers["POST", "/v1/tokenize"] = httpx.Response(
        200, json={"epoch": 1, "fields_left": ["phone"], "records": [{"phone": "555-1234"}]}
    )
    code = main(
        ["tokenize", "--url", "h:1", "--key", "k", "--field", "phone", "555-1234"],
        transport=peer.transport(),
    )
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # the value is not printed as if it were a token
    assert "field 'phone' is not configured" in captured.err and "555-1234" not in captured.err


def test_a_raw_body_s_fields_left_are_named_on_stderr(
    peer: FakePeer, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {"epoch": 1, "fields_left": ["note"], "records": [{"ssn": "tok_a", "note": "x"}]}
    peer.answers["POST", "/v1/tokenize"] = httpx.Response(200, json=answer)
    body = '{"records": [{"ssn": "1", "note": "x"}]}'
    assert (
        main(["tokenize", "--url", "h:1", "--key", "k", "--json", body], transport=peer.transport())
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out) == answer
    assert "fields left as given (not configured for this owner): note" in captured.err


# -- friction: version, bare command, help ------------------------------------------------------


def test_a_bare_tokenvault_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: tokenvault") and "tokenize" in out and "--version" in out


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    assert main(["--version"]) == 0
    assert (
        capsys.readouterr().out.strip() == f"tokenvault {importlib.metadata.version('tokenvault')}"
    )


def test_every_command_has_a_description() -> None:
    import argparse

    from tokenvault.cli.parser import build_parser

    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    described = {name: parser.description for name, parser in commands.choices.items()}
    assert set(described) >= {
        "init",
        "node",
        "up",
        "tokenize",
        "detokenize",
        "rotate",
        "epoch",
        "ring",
        "status",
        "bench",
        "renew-certs",
        "sim",
    }
    assert [name for name, text in described.items() if not text or len(text) < 20] == []
