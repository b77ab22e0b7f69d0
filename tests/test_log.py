"""EventLog: one JSON line per event, with the epoch and the level an operator needs."""

from __future__ import annotations

import io
import json

import pytest

from tokenvault.log import EventLog
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
