"""The Python client (tokenvault/client) against httpx.MockTransport: failover order, 503 and
Retry-After, timeouts, bounded attempts, the error classes, batching order, typed answers, and
the key kept out of every repr, error and report. No sockets, no real sleeps."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tokenvault.client import (
    AsyncClient,
    AttemptReport,
    BadAnswer,
    Client,
    ClientError,
    ConfigError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    ServerError,
    TokenvaultError,
    Unauthenticated,
    Unavailable,
    Unreachable,
)
from tokenvault.cluster_init import init_cluster, load_keys

KEY = "tv_secret-key-never-shown"
PEERS = ["http://127.0.0.1:7401", "http://127.0.0.1:7402", "http://127.0.0.1:7403"]
Behaviour = Callable[[httpx.Request], httpx.Response]


def answer(status: int, body: object, **headers: str) -> Behaviour:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def unavailable(retry_after: str = "1") -> Behaviour:
    body = {"error": {"code": "unavailable", "message": "Too few replicas answered in time."}}
    return answer(503, body, **{"Retry-After": retry_after})


class FakeCluster:
    """Each peer (by port) answers with its behaviours in turn, the last one forever."""

    def __init__(self, **behaviours: list[Behaviour]) -> None:
        self.behaviours = {int(port.removeprefix("p")): list(b) for port, b in behaviours.items()}
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.behaviours.get(request.url.port or 0, [refuse])
        behaviour = queue.pop(0) if len(queue) > 1 else queue[0]
        return behaviour(request)

    def ports(self) -> list[int | None]:
        return [request.url.port for request in self.requests]


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.reports: list[AttemptReport] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def make_client(cluster: FakeCluster, recorder: Recorder, **policy: float) -> Client:
    return Client(
        PEERS,
        KEY,
        transport=httpx.MockTransport(cluster.handle),
        sleep=recorder.sleep,
        on_attempt=recorder.reports.append,
        jitter=random.Random(1),
        policy=RetryPolicy(**policy),  # type: ignore[arg-type]
    )


EPOCH = {"owner": "alice", "epoch": 3}


def test_a_refused_peer_passes_the_request_to_the_next_and_later_requests_start_there() -> None:
    cluster = FakeCluster(p7401=[refuse], p7402=[answer(200, EPOCH)])
    recorder = Recorder()
    with make_client(cluster, recorder) as client:
        assert client.epoch().epoch == 3
        assert client.last_peer == PEERS[1]
        client.epoch()
    assert cluster.ports() == [7401, 7402, 7402]
    assert recorder.sleeps == [0.0]
    first, second = recorder.reports[:2]
    assert isinstance(first.error, Unreachable) and first.peer == PEERS[0]
    assert first.next_peer == PEERS[1]
    assert second.error is None and second.peer == PEERS[1] and second.attempt == 2
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in cluster.requests)


def test_503_moves_on_at_once_and_comes_back_only_after_retry_after() -> None:
    cluster = FakeCluster(
        p7401=[unavailable("2"), answer(200, EPOCH)], p7402=[unavailable()], p7403=[unavailable()]
    )
    recorder = Recorder()
    with make_client(cluster, recorder, backoff_base_s=0.0) as client:
        assert client.epoch() == client.epoch()
    assert cluster.ports()[:4] == [7401, 7402, 7403, 7401]
    assert recorder.sleeps[:2] == [0.0, 0.0]
    assert 1.9 < recorder.sleeps[2] <= 2.0  # back at 7401: its Retry-After of 2 s


def test_attempts_are_bounded_and_the_error_names_every_peer() -> None:
    cluster = FakeCluster()
    recorder = Recorder()
    with (
        make_client(cluster, recorder, attempts_max=4) as client,
        pytest.raises(Unreachable) as caught,
    ):
        client.tokenize([{"ssn": "123-45-6789"}])
    assert len(cluster.requests) == 4
    assert cluster.ports() == [7401, 7402, 7403, 7401]
    message = str(caught.value)
    assert all(f"cannot connect to {peer}" in message for peer in PEERS)
    assert caught.value.status is None and caught.value.code == "unreachable"
    assert len(recorder.sleeps) == 3 and recorder.sleeps[2] <= 0.1  # backoff after a round


def test_the_last_error_answer_wins_over_refused_connections() -> None:
    cluster = FakeCluster(p7401=[unavailable()], p7402=[refuse], p7403=[refuse])
    with (
        make_client(cluster, Recorder(), attempts_max=3) as client,
        pytest.raises(Unavailable) as caught,
    ):
        client.epoch()
    assert caught.value.status == 503 and caught.value.retry_after_s == 1.0
    assert caught.value.peer == PEERS[0]


def test_tokenize_is_retried_after_a_timeout_but_a_blind_rotate_is_not() -> None:
    tokenized = {"epoch": 1, "records": [{"ssn": "tok_a"}]}
    cluster = FakeCluster(p7401=[time_out], p7402=[answer(200, tokenized)])
    with make_client(cluster, Recorder()) as client:
        assert client.tokenize([{"ssn": "1"}]).records == [{"ssn": "tok_a"}]
    assert cluster.ports() == [7401, 7402]

    cluster = FakeCluster(p7401=[time_out], p7402=[answer(200, EPOCH | {"rotated": True})])
    with make_client(cluster, Recorder()) as client, pytest.raises(Unreachable, match="no answer"):
        client.rotate()
    assert cluster.ports() == [7401]  # it may have rotated: never sent twice


def test_a_blind_rotate_fails_over_when_it_was_never_sent_and_a_conditional_one_always() -> None:
    rotated = answer(200, {"owner": "alice", "epoch": 4, "rotated": True})
    cluster = FakeCluster(p7401=[refuse], p7402=[rotated])
    with make_client(cluster, Recorder()) as client:
        assert client.rotate().rotated
    cluster = FakeCluster(p7401=[unavailable()], p7402=[time_out], p7403=[rotated])
    with make_client(cluster, Recorder()) as client:
        assert client.rotate(expected_epoch=3).epoch == 4
    assert json.loads(cluster.requests[-1].content) == {"expected_epoch": 3}


def test_a_blind_rotate_ends_on_503() -> None:
    cluster = FakeCluster(p7401=[unavailable()], p7402=[answer(200, EPOCH)])
    with make_client(cluster, Recorder()) as client, pytest.raises(Unavailable):
        client.rotate()
    assert cluster.ports() == [7401]


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_request", InvalidRequest),
        (401, "unauthenticated", Unauthenticated),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (413, "payload_too_large", PayloadTooLarge),
        (409, "something_new", ClientError),
        (500, "internal", ServerError),
    ],
)
def test_error_answers_raise_their_class_at_once(
    status: int, code: str, cls: type[TokenvaultError]
) -> None:
    body = {"error": {"code": code, "message": "A sentence for a person."}}
    cluster = FakeCluster(p7401=[answer(status, body)], p7402=[answer(200, EPOCH)])
    with make_client(cluster, Recorder()) as client, pytest.raises(cls) as caught:
        client.epoch()
    error = caught.value
    assert (error.status, error.code, error.message) == (status, code, "A sentence for a person.")
    assert str(error) == f"{status} {code}: A sentence for a person."
    assert cluster.ports() == [7401]  # another peer would refuse it the same way


def test_an_answer_that_is_not_the_api_s_is_a_bad_answer() -> None:
    cluster = FakeCluster(p7401=[lambda r: httpx.Response(200, text="<html>")])
    with make_client(cluster, Recorder()) as client, pytest.raises(BadAnswer, match="without JSON"):
        client.epoch()
    cluster = FakeCluster(p7401=[answer(200, {"owner": "alice", "epoch": "3"})])
    with make_client(cluster, Recorder()) as client, pytest.raises(BadAnswer, match=r"\$\.epoch"):
        client.epoch()


def test_batches_of_at_most_1000_in_order() -> None:
    def tokenize(request: httpx.Request) -> httpx.Response:
        records = json.loads(request.content)["records"]
        tokens = [{"ssn": "tok_" + r["ssn"], "note": r["note"]} for r in records]
        return httpx.Response(
            200, json={"epoch": len(cluster.requests), "fields_left": ["note"], "records": tokens}
        )

    def detokenize(request: httpx.Request) -> httpx.Response:
        tokens = json.loads(request.content)["tokens"]
        results = [
            {"token": t, "found": True, "value": t[4:], "field": "ssn", "epoch": 1} for t in tokens
        ]
        return httpx.Response(200, json={"results": results})

    cluster = FakeCluster(p7401=[tokenize, tokenize, tokenize, detokenize])
    records = [{"ssn": str(i), "note": "n"} for i in range(2_500)]
    with make_client(cluster, Recorder()) as client:
        many = client.tokenize_many(iter(records))
        found = client.detokenize_many(r["ssn"] for r in many.records)
    sizes = [
        len(json.loads(r.content).get("records") or json.loads(r.content)["tokens"])
        for r in cluster.requests
    ]
    assert sizes == [1_000, 1_000, 500, 1_000, 1_000, 500]
    assert [r["ssn"] for r in many.records] == [f"tok_{i}" for i in range(2_500)]
    assert many.epochs == (1, 2, 3) and many.fields_left == ("note",)
    assert [f.value for f in found] == [str(i) for i in range(2_500)]


def test_typed_answers() -> None:
    ring = {
        "peer": "n2",
        "version": "0123456789abcdef",
        "replicas": 3,
        "write_quorum": 2,
        "read_quorum": 2,
        "vnodes_per_peer": 64,
        "future_field": 1,
        "peers": [
            {
                "id": "n1",
                "address": "127.0.0.1:7401",
                "state": "down",
                "for_s": 3,
                "last_heard_s_ago": None,
                "self": False,
            }
        ],
    }
    placement = {
        "owner": "alice",
        "position": 12,
        "ring_version": "0123456789abcdef",
        "preference_list": [{"id": "n1", "address": "127.0.0.1:7401"}],
    }
    cluster = FakeCluster(
        p7401=[
            answer(200, {"epoch": 2, "fields_left": ["phone"], "records": [{"phone": "555"}]}),
            answer(200, {"results": [{"token": "tok_x", "found": False}]}),
            answer(200, {"token": "tok_a", "value": "v", "field": "ssn", "epoch": 2}),
            answer(200, ring),
            answer(200, placement),
        ]
    )
    with make_client(cluster, Recorder()) as client:
        assert client.tokenize([{"phone": "555"}]).fields_left == ("phone",)
        assert client.detokenize(["tok_x"])[0].value is None
        assert client.lookup_token("tok_a").field == "ssn"
        seen = client.ring()
        assert seen.peers[0].state == "down" and not seen.peers[0].is_self
        assert client.ring_owner("al/ice").preference_list[0].id == "n1"
    assert cluster.requests[2].url.raw_path == b"/v1/tokens/tok_a"
    assert cluster.requests[4].url.raw_path == b"/v1/ring/owners/al%2Fice"


def test_a_tokenize_answer_without_fields_left_reads_as_none_left() -> None:
    cluster = FakeCluster(p7401=[answer(200, {"epoch": 1, "records": [{"ssn": "tok_a"}]})])
    with make_client(cluster, Recorder()) as client:
        assert client.tokenize([{"ssn": "1"}]).fields_left == ()


def test_the_key_is_never_shown(tmp_path: Path) -> None:
    cluster = FakeCluster(p7401=[refuse], p7402=[time_out], p7403=[unavailable()])
    recorder = Recorder()
    client = make_client(cluster, recorder, attempts_max=3)
    with pytest.raises(TokenvaultError) as caught:
        client.tokenize([{"ssn": "123-45-6789"}])
    shown = [repr(client), str(caught.value), repr(caught.value), *map(repr, recorder.reports)]
    shown += [str(report.error) for report in recorder.reports]
    assert not any(KEY in text or "123-45-6789" in text for text in shown)
    client.close()


def test_bad_construction_is_refused_without_echoing_the_key() -> None:
    with pytest.raises(ValueError, match="at least one peer"):
        Client([], KEY)
    with pytest.raises(ValueError, match="printable ASCII") as caught:
        Client(PEERS, "tv_\nnope")
    assert "nope" not in str(caught.value)
    with Client("127.0.0.1:7401", KEY) as bare:
        assert bare.peers == ("http://127.0.0.1:7401",)


def test_from_cluster_dir_knows_every_peer_and_the_chosen_key(tmp_path: Path) -> None:
    init_cluster(tmp_path, nodes=3, base_port=7400, owners=("alice", "bob"))
    keys = load_keys(tmp_path / "keys.json")
    cluster = FakeCluster(p7401=[refuse], p7402=[refuse], p7403=[answer(200, EPOCH)])
    for options, key in [
        ({}, keys.owners["alice"]),
        ({"owner": "bob"}, keys.owners["bob"]),
        ({"admin": True}, keys.admin),
    ]:
        with Client.from_cluster_dir(
            tmp_path,
            transport=httpx.MockTransport(cluster.handle),
            sleep=Recorder().sleep,
            **options,  # type: ignore[arg-type]
        ) as client:
            assert client.peers == tuple(PEERS)
            client.epoch()
        assert cluster.requests[-1].headers["authorization"] == f"Bearer {key}"
    with pytest.raises(ConfigError, match="mallory"):
        Client.from_cluster_dir(tmp_path, owner="mallory")


async def test_the_async_client_fails_over_the_same_way() -> None:
    tokenized = {"epoch": 1, "records": [{"ssn": "tok_a"}]}
    cluster = FakeCluster(p7401=[refuse], p7402=[unavailable()], p7403=[answer(200, tokenized)])
    recorder = Recorder()
    async with AsyncClient(
        PEERS,
        KEY,
        transport=httpx.MockTransport(cluster.handle),
        sleep=recorder.async_sleep,
        on_attempt=recorder.reports.append,
    ) as client:
        assert (await client.tokenize([{"ssn": "1"}])).records == [{"ssn": "tok_a"}]
        assert (await client.tokenize_many([{"ssn": "1"}] * 3)).epochs == (1,)
        assert client.last_peer == PEERS[2]
        with pytest.raises(Unreachable):
            cluster.behaviours[7403] = [time_out]
            await client.rotate()
    assert cluster.ports() == [7401, 7402, 7403, 7403, 7403]
    assert [r.error is None for r in recorder.reports] == [False, False, True, True, False]
