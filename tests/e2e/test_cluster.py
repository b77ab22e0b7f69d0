"""End-to-end: a real 3-peer cluster on loopback (N=3, W=2, R=2), through the public API only."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import plyvel
import pytest
import trio

from tests.e2e.harness import Cluster
from tokenvault.cli import main
from tokenvault.config import load_config
from tokenvault.quorum.records import decided_key, decode_mapping, encode_decided, read_decided
from tokenvault.quorum.sealing import Sealer

pytestmark = pytest.mark.e2e


def tokenize(
    cluster: Cluster, peer: str, owner: str, records: Sequence[Mapping[str, object]]
) -> httpx.Response:
    return httpx.post(
        cluster.url(peer) + "/v1/tokenize",
        headers=cluster.headers(owner),
        json={"records": records},
        timeout=10.0,
        verify=cluster.verify,
    )


def detokenize(cluster: Cluster, peer: str, owner: str, tokens: list[str]) -> httpx.Response:
    return httpx.post(
        cluster.url(peer) + "/v1/detokenize",
        headers=cluster.headers(owner),
        json={"tokens": tokens},
        timeout=10.0,
        verify=cluster.verify,
    )


def stored_mappings(data_dir: Path) -> dict[bytes, bytes]:
    """Every mapping record in a stopped peer's LevelDB."""
    db = plyvel.DB(str(data_dir / "leveldb"))
    try:
        return dict(db.iterator(prefix=b"m\x00"))
    finally:
        db.close()


def test_same_token_on_every_peer_and_other_owners_see_nothing(cluster: Cluster) -> None:
    record = {"ssn": "123-45-6789", "email": "a@example.com", "note": "left as is"}
    answers = [tokenize(cluster, peer, "alice", [record]) for peer in cluster.peer_ids]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    bodies = [a.json() for a in answers]
    assert bodies[0] == bodies[1] == bodies[2]
    tokenized = bodies[0]["records"][0]
    assert bodies[0]["epoch"] == 1
    assert tokenized["note"] == "left as is"
    assert tokenized["ssn"].startswith("tok_") and tokenized["ssn"] != record["ssn"]
    assert len(tokenized["ssn"]) <= 64 and "123" not in tokenized["ssn"]
    for peer in cluster.peer_ids:
        answer = detokenize(cluster, peer, "alice", [tokenized["ssn"], tokenized["email"]])
        assert answer.status_code == 200
        results = answer.json()["results"]
        assert results[0] == {
            "token": tokenized["ssn"],
            "found": True,
            "value": "123-45-6789",
            "field": "ssn",
            "epoch": 1,
        }
        assert results[1]["value"] == "a@example.com"
    # Another owner, a missing token and a malformed one get the very same answer.
    missing = "tok_" + "A" * 32
    other = detokenize(cluster, "n2", "bob", [tokenized["ssn"], missing, "garbage"])
    assert other.status_code == 200
    assert [r["found"] for r in other.json()["results"]] == [False, False, False]
    assert all(set(r) == {"token", "found"} for r in other.json()["results"])
    not_found = [
        httpx.get(
            cluster.url("n3") + f"/v1/tokens/{t}",
            headers=cluster.headers(owner),
            timeout=10,
            verify=cluster.verify,
        )
        for owner, t in (("bob", tokenized["ssn"]), ("alice", missing), ("alice", "garbage"))
    ]
    assert {(r.status_code, r.text) for r in not_found} == {(404, not_found[0].text)}
    mine = httpx.get(
        cluster.url("n3") + f"/v1/tokens/{tokenized['ssn']}",
        headers=cluster.headers("alice"),
        timeout=10,
        verify=cluster.verify,
    )
    assert mine.status_code == 200 and mine.json()["value"] == "123-45-6789"


def _owner_view(cluster: Cluster, owner: str) -> dict[str, Any]:
    view = httpx.get(
        cluster.url("n1") + f"/v1/admin/owners/{owner}",
        headers=cluster.admin_headers(),
        timeout=10,
        verify=cluster.verify,
    )
    assert view.status_code == 200, view.text
    payload: dict[str, Any] = view.json()
    return payload


def _peer_states(cluster: Cluster, peer: str) -> dict[str, str]:
    view = httpx.get(
        cluster.url(peer) + "/v1/admin/node", headers=cluster.admin_headers(), verify=cluster.verify
    )
    assert view.status_code == 200, view.text
    return {p["id"]: p["state"] for p in view.json()["peers"]}


def test_survives_one_killed_peer_refuses_with_two_and_recovers_after_restart(
    cluster: Cluster,
) -> None:
    before = tokenize(cluster, "n1", "alice", [{"ssn": f"before-{i}"} for i in range(20)])
    assert before.status_code == 200
    cluster.kill("n3")
    during = tokenize(cluster, "n1", "alice", [{"ssn": f"during-{i}"} for i in range(20)])
    assert during.status_code == 200, during.text
    tokens = [r["ssn"] for r in before.json()["records"] + during.json()["records"]]
    found = detokenize(cluster, "n2", "alice", tokens)
    assert found.status_code == 200 and all(r["found"] for r in found.json()["results"])

    cluster.kill("n2")
    refused = tokenize(cluster, "n1", "alice", [{"ssn": "after-two-down"}])
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "unavailable"
    assert "retry-after" in refused.headers
    # once n1's failure detector holds both down, an epoch read gives up at the short grace
    deadline = time.monotonic() + 15.0
    while _peer_states(cluster, "n1") != {"n1": "up", "n2": "down", "n3": "down"}:
        assert time.monotonic() < deadline, _peer_states(cluster, "n1")
        time.sleep(0.1)
    started = time.monotonic()
    epoch = httpx.get(
        cluster.url("n1") + "/v1/epoch",
        headers=cluster.headers("alice"),
        timeout=10,
        verify=cluster.verify,
    )
    assert epoch.status_code == 503 and epoch.json()["error"]["code"] == "unavailable"
    assert time.monotonic() - started < 2.5  # the grace (0.5 s), not the 5 s deadline

    cluster.start("n2")
    cluster.start("n3")
    cluster.wait_ready("n2")
    cluster.wait_ready("n3")
    for peer in cluster.peer_ids:
        answer = detokenize(cluster, peer, "alice", tokens)
        assert answer.status_code == 200
        assert all(r["found"] for r in answer.json()["results"]), peer
    # Every acknowledged mapping is on W=2 replicas' disks even with n1 gone.
    cluster.kill("n1")
    answer = detokenize(cluster, "n2", "alice", tokens)
    assert answer.status_code == 200 and all(r["found"] for r in answer.json()["results"])
    events = [e["event"] for e in cluster.log_events("n3")]
    assert events.count("peer_start") == 2


async def test_concurrent_overlapping_tokenize_gives_one_mapping_per_token(
    cluster: Cluster,
) -> None:
    values = [f"4111-0000-0000-{i:04d}" for i in range(40)]
    answers: list[dict[str, str]] = []

    async def client(index: int) -> None:
        peer = cluster.peer_ids[index % 3]
        chosen = [values[(index * 7 + k) % len(values)] for k in range(10)]
        async with httpx.AsyncClient(timeout=20.0, verify=cluster.verify) as http:
            response = await http.post(
                cluster.url(peer) + "/v1/tokenize",
                headers=cluster.headers("alice"),
                json={"records": [{"card_number": v} for v in chosen]},
            )
        assert response.status_code == 200, response.text
        for value, record in zip(chosen, response.json()["records"], strict=True):
            answers.append({"value": value, "token": record["card_number"]})

    async with trio.open_nursery() as nursery:
        for index in range(50):
            nursery.start_soon(client, index)

    token_of: dict[str, str] = {}
    for answer in answers:
        assert token_of.setdefault(answer["value"], answer["token"]) == answer["token"]
    assert len(set(token_of.values())) == len(values)
    for peer in cluster.peer_ids:
        cluster.stop(peer)
    replicas = [stored_mappings(p.data_dir) for p in cluster.init.peers]
    sealer = Sealer(load_config(cluster.init.config_path).secret)
    held_by = [
        {
            token: decode_mapping(sealer, "alice", token, raw).value
            for token, raw in ((key.split(b"\x00")[-1].decode(), raw) for key, raw in r.items())
        }
        for r in replicas
    ]
    for token_to_value in held_by:
        for token, value in token_to_value.items():
            assert token_of[value] == token  # no value under a foreign token
    for value, token in token_of.items():
        holders = sum(1 for r in held_by if r.get(token) == value)
        assert holders >= 2, f"an acknowledged token is on {holders} replicas"


def test_admin_owner_view_shows_every_replica_and_convergence(cluster: Cluster) -> None:
    answer = tokenize(cluster, "n1", "alice", [{"ssn": f"view-{i}"} for i in range(30)])
    assert answer.status_code == 200
    view = {}
    for _ in range(50):  # the third replica may still be storing: bounded wait on its own view
        view = httpx.get(
            cluster.url("n2") + "/v1/admin/owners/alice",
            headers=cluster.admin_headers(),
            timeout=10,
            verify=cluster.verify,
        ).json()
        if view["converged"]:
            break
    assert view["converged"] is True and view["epochs_agree"] is True
    assert {r["peer"] for r in view["replicas"]} == set(cluster.peer_ids)
    assert {r["token_count"] for r in view["replicas"]} == {30}
    assert len({r["digest"] for r in view["replicas"]}) == 1
    assert all(r["active_epoch"] == 1 for r in view["replicas"])
    forbidden = httpx.get(
        cluster.url("n2") + "/v1/admin/owners/alice",
        headers=cluster.headers("alice"),
        timeout=10,
        verify=cluster.verify,
    )
    assert forbidden.status_code == 403
    missing = httpx.get(
        cluster.url("n2") + "/v1/admin/owners/nobody",
        headers=cluster.admin_headers(),
        timeout=10,
        verify=cluster.verify,
    )
    assert missing.status_code == 404
    cluster.kill("n3")
    degraded = httpx.get(
        cluster.url("n1") + "/v1/admin/owners/alice",
        headers=cluster.admin_headers(),
        timeout=10,
        verify=cluster.verify,
    ).json()
    assert degraded["converged"] is False
    assert [r["reachable"] for r in degraded["replicas"] if r["peer"] == "n3"] == [False]


def test_a_peer_reading_another_configuration_is_refused_and_raises_an_alarm(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cluster.stop("n3") == 0
    other = cluster.directory / "cluster-n3.toml"  # other vnodes: other preference lists
    text = cluster.init.config_path.read_text()
    assert text.count("vnodes_per_peer = 64") == 1
    other.write_text(text.replace("vnodes_per_peer = 64", "vnodes_per_peer = 65"))
    cluster.start("n3", config_path=other)
    cluster.wait_ready("n3")
    restarted_at = len(cluster.log_events("n3"))
    answer = tokenize(cluster, "n1", "alice", [{"ssn": f"while-n3-differs-{i}"} for i in range(5)])
    assert answer.status_code == 200, answer.text  # n1 and n2 still form W=2
    deadline = time.monotonic() + 15.0
    while _peer_states(cluster, "n1")["n3"] != "down" or _peer_states(cluster, "n3") != {
        "n1": "down",
        "n2": "down",
        "n3": "up",
    }:
        assert time.monotonic() < deadline, (
            _peer_states(cluster, "n1"),
            _peer_states(cluster, "n3"),
        )
        time.sleep(0.2)
    for peer in ("n1", "n3"):
        alarms = [e for e in cluster.log_events(peer) if e["event"] == "config_mismatch"]
        assert alarms and all(a["level"] == "error" for a in alarms), peer
        assert alarms[0]["ours"] != alarms[0]["theirs"]
    fingerprints = {
        peer: httpx.get(
            cluster.url(peer) + "/v1/admin/node",
            headers=cluster.admin_headers(),
            verify=cluster.verify,
        ).json()["cluster_fingerprint"]
        for peer in cluster.peer_ids
    }
    assert fingerprints["n1"] == fingerprints["n2"] != fingerprints["n3"]
    # the operator's view says so too
    url_options = ["--url", cluster.url("n1"), *cluster.cacert_options()]
    assert main(["status", *url_options, "--key", cluster.admin_key]) == 4  # configuration differs
    status = capsys.readouterr().out
    assert "CONFIGURATION DIFFERS between peers (n1, n2 read " in status
    assert f"; n3 read {fingerprints['n3'][:8]})" in status
    # n3 took no write from the others, and wrote nothing of its own through them
    after = cluster.log_events("n3")[restarted_at:]
    stored_ids = [
        str(request_id)
        for e in after
        if e["event"] == "mapping_stored"
        for request_id in _listed(e.get("request_ids", [e["request_id"]]))
    ]
    assert not [request_id for request_id in stored_ids if request_id[:2] != "n3"]


def _listed(value: object) -> list[object]:
    assert isinstance(value, list)
    return value


def test_epochs_agree_compares_decided_values_not_just_numbers(cluster: Cluster) -> None:
    rotated = httpx.post(
        cluster.url("n1") + "/v1/epoch/rotate",
        headers=cluster.headers("alice"),
        timeout=10,
        verify=cluster.verify,
    )
    assert rotated.status_code == 200 and rotated.json()["epoch"] == 2
    # the rotate answered once a majority decided: wait for n3 to learn epoch 2 as well
    deadline = time.monotonic() + 15.0
    while not _owner_view(cluster, "alice")["epochs_agree"]:
        assert time.monotonic() < deadline, _owner_view(cluster, "alice")
        time.sleep(0.1)
    assert {r["active_epoch"] for r in _owner_view(cluster, "alice")["replicas"]} == {2}
    assert cluster.stop("n3") == 0
    # Tamper with n3's disk: epoch 2 decided with another salt (what Paxos must never allow).
    db = plyvel.DB(str(cluster.init.peers[2].data_dir / "leveldb"))
    try:
        held = read_decided(db, "alice", 2)
        assert held is not None
        forged = dataclasses.replace(held, salt="ff" * 16)
        db.put(decided_key("alice", 2), encode_decided(forged), sync=True)
    finally:
        db.close()
    cluster.start("n3")
    cluster.wait_ready("n3")
    view = _owner_view(cluster, "alice")
    by_peer = {r["peer"]: r for r in view["replicas"]}
    assert {r["active_epoch"] for r in by_peer.values()} == {2}
    assert by_peer["n1"]["active_epoch_id"] == by_peer["n2"]["active_epoch_id"]
    assert by_peer["n3"]["active_epoch_id"] != by_peer["n1"]["active_epoch_id"]
    assert view["epochs_agree"] is False and view["converged"] is False


def test_metrics_count_requests_by_route_and_status_and_never_show_values(
    cluster: Cluster,
) -> None:
    secret_value = "987-65-4329"
    answer = tokenize(cluster, "n1", "alice", [{"ssn": secret_value}])
    assert answer.status_code == 200
    token = answer.json()["records"][0]["ssn"]
    missing = httpx.get(
        cluster.url("n1") + "/v1/tokens/tok_" + "A" * 32,
        headers=cluster.headers("alice"),
        verify=cluster.verify,
    )
    assert missing.status_code == 404
    # n1's own replica may store after W others acknowledged: wait for its event (bounded)
    deadline = time.monotonic() + 10.0
    while True:
        metrics = httpx.get(cluster.url("n1") + "/metrics", verify=cluster.verify)
        assert metrics.status_code == 200
        series = dict(
            line.rsplit(" ", 1) for line in metrics.text.splitlines() if not line.startswith("#")
        )
        if 'tokenvault_events_total{event="mapping_stored"}' in series:
            break
        assert time.monotonic() < deadline, metrics.text
        time.sleep(0.1)
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert series['tokenvault_http_requests_total{route="tokenize",status="200"}'] == "1"
    assert series['tokenvault_http_requests_total{route="token",status="404"}'] == "1"
    assert series['tokenvault_http_request_seconds_count{route="tokenize",status="200"}'] == "1"
    assert series['tokenvault_http_request_seconds_count{route="token",status="404"}'] == "1"
    assert series['tokenvault_quorum_writes_total{outcome="ok"}'] == "1"
    assert int(series['tokenvault_events_total{event="mapping_stored"}']) >= 1
    # the peer core's drops are running totals from the start, at 0 on a healthy peer
    assert series["tokenvault_timers_dropped_total"] == "0"
    assert series["tokenvault_held_messages_dropped_total"] == "0"
    for secret in (secret_value, token, cluster.owner_keys["alice"], cluster.admin_key):
        assert secret not in metrics.text
