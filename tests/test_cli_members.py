"""`tokenvault members show | add | remove | replace`: the requests they send (admin key by
default with --dir), what they print, --wait polling until the ring is stable with the change
applied (and giving up after --timeout), and an error answer's exit code. Against
httpx.MockTransport: no sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenvault.cli import main, members_commands
from tokenvault.client import Members
from tokenvault.client.results import decode_answer
from tokenvault.cluster_init import init_cluster, load_keys

MEMBERS = "/v1/admin/members"


def member(peer: str, state: str = "active") -> dict[str, str]:
    return {"id": peer, "address": f"127.0.0.1:74{peer[1:]:0>2}", "state": state}


def ring(version: int, *members: dict[str, str]) -> dict[str, Any]:
    stable = all(m["state"] == "active" for m in members)
    return {"version": version, "stable": stable, "members": list(members), "transfers": []}


BOOTSTRAP = [member("n1"), member("n2"), member("n3")]


class Cluster:
    """Answers POST with `changed`, and each GET with the next of `rings` (the last repeated)."""

    def __init__(self, changed: dict[str, Any], rings: list[dict[str, Any]]) -> None:
        self.changed = changed
        self.rings = rings
        self.requests: list[httpx.Request] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.url.path == MEMBERS
        if request.method == "POST":
            return httpx.Response(202, json=self.changed)
        answer = self.rings[0] if len(self.rings) == 1 else self.rings.pop(0)
        return httpx.Response(200, json=answer)


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    init_cluster(tmp_path / "cluster", nodes=3, base_port=7400)
    return tmp_path / "cluster"


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    pauses: list[float] = []
    monkeypatch.setattr(members_commands, "pause", pauses.append)
    monkeypatch.delenv("TOKENVAULT_KEY", raising=False)
    yield pauses


def changed(version: int, *members: dict[str, str], outcome: str = "changed") -> dict[str, Any]:
    return {**ring(version, *members), "outcome": outcome, "moved_owners": ["alice"]}


def test_show_prints_the_version_and_each_member_with_the_admin_key(
    cluster_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = Cluster({}, [ring(2, *BOOTSTRAP, member("n4", "joining"))])
    assert main(["members", "show", "--dir", str(cluster_dir)], transport=cluster.transport()) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "ring version 2, a change pending",
        "  n1  127.0.0.1:7401  active",
        "  n2  127.0.0.1:7402  active",
        "  n3  127.0.0.1:7403  active",
        "  n4  127.0.0.1:7404  joining",
    ]
    admin = load_keys(cluster_dir / "keys.json").admin
    assert cluster.requests[0].headers["authorization"] == f"Bearer {admin}"
    args = ["members", "show", "--json", "--dir", str(cluster_dir)]
    assert main(args, transport=cluster.transport()) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2


@pytest.mark.parametrize(
    ("argv", "body", "line"),
    [
        (
            ["add", "n4", "127.0.0.1:7404"],
            {"action": "add", "id": "n4", "address": "127.0.0.1:7404"},
            "n4 added",
        ),
        (["remove", "n3"], {"action": "remove", "id": "n3"}, "n3 removed"),
        (
            ["replace", "n2", "n5", "127.0.0.1:7405"],
            {"action": "replace", "id": "n5", "address": "127.0.0.1:7405", "replaces": "n2"},
            "n5 replacing",
        ),
    ],
    ids=["add", "remove", "replace"],
)
def test_a_change_sends_its_body_and_returns_at_the_joint_version(
    cluster_dir: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    body: dict[str, str],
    line: str,
) -> None:
    cluster = Cluster(changed(2, *BOOTSTRAP, member("n4", "joining")), [])
    assert main(["members", *argv, "--dir", str(cluster_dir)], transport=cluster.transport()) == 0
    (request,) = cluster.requests
    assert (request.method, json.loads(request.content)) == ("POST", body)
    out = capsys.readouterr().out
    assert out.startswith(f"{line}: ring version 2 (joint")
    assert "owners moving: alice" in out


def test_wait_polls_until_the_ring_is_stable_with_the_change_applied(
    cluster_dir: Path, capsys: pytest.CaptureFixture[str], no_pause: list[float]
) -> None:
    joint = ring(2, *BOOTSTRAP, member("n4", "joining"))
    finished = ring(3, *BOOTSTRAP, member("n4"))
    cluster = Cluster(changed(2, *BOOTSTRAP, member("n4", "joining")), [joint, joint, finished])
    argv = ["members", "add", "n4", "127.0.0.1:7404", "--wait", "--dir", str(cluster_dir)]
    assert main(argv, transport=cluster.transport()) == 0
    assert [r.method for r in cluster.requests] == ["POST", "GET", "GET", "GET"]
    assert no_pause == [members_commands.WAIT_POLL_INTERVAL_S] * 2
    assert capsys.readouterr().out.splitlines()[-1] == "finished: ring version 3, stable"


def test_wait_for_a_remove_ends_when_the_member_is_gone(cluster_dir: Path) -> None:
    leaving = ring(2, member("n1"), member("n2"), member("n3", "leaving"))
    cluster = Cluster(
        changed(2, *leaving["members"]), [leaving, ring(3, member("n1"), member("n2"))]
    )
    argv = ["members", "remove", "n3", "--wait", "--dir", str(cluster_dir)]
    assert main(argv, transport=cluster.transport()) == 0
    assert [r.method for r in cluster.requests] == ["POST", "GET", "GET"]


def test_wait_gives_up_after_its_timeout_saying_where_the_ring_is(
    cluster_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    joint = ring(2, *BOOTSTRAP, member("n4", "joining"))
    cluster = Cluster(changed(2, *joint["members"]), [joint])
    argv = ["members", "add", "n4", "127.0.0.1:7404", "--wait", "--timeout", "0"]
    assert main([*argv, "--dir", str(cluster_dir)], transport=cluster.transport()) == 1
    err = capsys.readouterr().err
    assert "did not finish within 0 s: the ring is at version 2, a change pending" in err


def test_a_refused_change_prints_its_code_and_exits_1(
    cluster_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        error = {"code": "change_pending", "message": "A membership change is pending."}
        return httpx.Response(409, json={"error": error})

    argv = ["members", "remove", "n3", "--dir", str(cluster_dir)]
    assert main(argv, transport=httpx.MockTransport(refuse)) == 1
    assert "409 change_pending: A membership change is pending." in capsys.readouterr().err


def test_is_finished_needs_stable_and_the_change_in() -> None:
    decode = decode_answer
    results = Members
    joint = decode(ring(2, *BOOTSTRAP, member("n4", "joining")), "u", results)
    done = decode(ring(3, *BOOTSTRAP, member("n4")), "u", results)
    assert not members_commands.is_finished(joint, "add", "n4", None)
    assert members_commands.is_finished(done, "add", "n4", None)
    assert not members_commands.is_finished(done, "remove", "n4", None)
    replaced = decode(ring(3, member("n1"), member("n3"), member("n5")), "u", results)
    assert members_commands.is_finished(replaced, "replace", "n5", "n2")
    assert not members_commands.is_finished(done, "replace", "n4", "n3")
