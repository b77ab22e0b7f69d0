"""EventLog: one JSON line per event, with the epoch and the level an operator needs."""

from __future__ import annotations

import io
import json

import pytest

from tokenvault.log import REQUEST_IDS_MAX, EventLog, LogThrottle
from tokenvault.quorum.effects import Event


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_event_names_its_own_epoch_before_the_active_one() -> None:
    stream = io.StringIO()
    log = EventLog("n1", stream)
    log.core_event(
        Event(
            name="mapping_stored", owner="alice", request_id="r-1", epoch=3, details=(("count", 2),)
        ),
        active_epoch=5,
    )
    log.core_event(
        Event(name="anti_entropy_pass", owner="alice", request_id="ae:n1:1"), active_epoch=5
    )
    log.core_event(Event(name="peer_down", details=(("target", "n2"), ("was", "suspect"))))
    stored, passed, down = _lines(stream)
    assert stored == {
        "ts": stored["ts"],
        "level": "info",
        "peer": "n1",
        "event": "mapping_stored",
        "owner": "alice",
        "epoch": 3,
        "request_id": "r-1",
        "count": 2,
    }
    assert passed["epoch"] == 5
    assert "epoch" not in down and "owner" not in down


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("mapping_conflict", "error"),
        ("paxos_disagreement", "error"),
        ("storage_corrupt", "error"),
        ("mapping_repaired", "error"),
        ("quorum_failed", "warning"),
        ("peer_down", "warning"),
        ("hint_dropped", "warning"),
        ("epoch_operation_failed", "warning"),
        ("mapping_stored", "info"),
        ("peer_up", "info"),
    ],
)
def test_levels(name: str, level: str) -> None:
    stream = io.StringIO()
    EventLog("n1", stream).core_event(Event(name=name, owner="alice"), active_epoch=1)
    assert _lines(stream)[0]["level"] == level


def test_details_may_not_reuse_a_line_field() -> None:
    with pytest.raises(AssertionError):
        Event(name="epoch_learned", owner="alice", details=(("epoch", 2),))


def test_a_throttle_lets_one_line_per_key_and_interval_through_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = LogThrottle(10.0, keys_max=2, clock_s=lambda: now[0])
    assert throttle.allow("a") == 0  # the first line of a key goes through
    assert [throttle.allow("a") for _ in range(3)] == [None, None, None]
    assert throttle.allow("b") == 0  # keys are throttled apart
    now[0] = 9.9
    assert throttle.allow("a") is None
    now[0] = 10.0
    assert throttle.allow("a") == 4  # the four held back since its previous line
    assert throttle.allow("a") is None


def test_a_throttle_remembers_at_most_keys_max_keys() -> None:
    throttle = LogThrottle(10.0, keys_max=2, clock_s=lambda: 0.0)
    assert (throttle.allow("a"), throttle.allow("b")) == (0, 0)
    assert throttle.allow("a") is None
    assert throttle.allow("c") == 0  # a third key: it starts over, memory stays bounded
    assert throttle.allow("a") == 0
    assert throttle.allow("c") is None


def test_the_common_write_outcomes_of_a_step_are_one_line_per_owner_and_epoch() -> None:
    stream = io.StringIO()
    stored = [
        Event(
            name="mapping_stored",
            owner="alice",
            request_id=f"r-{i}",
            epoch=2,
            details=(("count", i),),
        )
        for i in range(1, 4)
    ]
    other_epoch = Event(
        name="mapping_stored", owner="alice", request_id="r-9", epoch=3, details=(("count", 5),)
    )
    down = Event(name="peer_down", details=(("target", "n2"),))
    EventLog("n1", stream).core_events([stored[0], down, other_epoch, *stored[1:]])
    down_line, merged, single = _lines(stream)
    assert down_line["event"] == "peer_down"  # not batched: its own line, first
    assert merged == {
        "ts": merged["ts"],
        "level": "info",
        "peer": "n1",
        "event": "mapping_stored",
        "owner": "alice",
        "epoch": 2,
        "request_id": "r-1",
        "count": 6,
        "requests": 3,
        "request_ids": ["r-1", "r-2", "r-3"],
    }
    assert single["epoch"] == 3 and single["count"] == 5 and "requests" not in single


def test_a_merged_line_names_at_most_its_bound_of_request_ids() -> None:
    stream = io.StringIO()
    events = [
        Event(
            name="mapping_identical",
            owner="bob",
            request_id=f"r-{i}",
            epoch=1,
            details=(("count", 1),),
        )
        for i in range(REQUEST_IDS_MAX + 5)
    ]
    EventLog("n1", stream).core_events(events)
    (line,) = _lines(stream)
    assert line["count"] == REQUEST_IDS_MAX + 5 and line["requests"] == REQUEST_IDS_MAX + 5
    assert line["request_ids"] == [f"r-{i}" for i in range(REQUEST_IDS_MAX)]
    assert line["request_ids_omitted"] == 5
