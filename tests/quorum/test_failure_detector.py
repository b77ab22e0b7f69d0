"""The failure detector: silence makes a peer suspect then down; any sign of life, up again."""

from __future__ import annotations

from tokenvault.quorum.failure_detector import DetectorLimits, FailureDetector, PeerState
from tokenvault.quorum.messages import Heartbeat

LIMITS = DetectorLimits(heartbeat_interval_s=0.5, suspect_after_s=1.5, down_after_s=4.0)


def detector() -> FailureDetector:
    return FailureDetector(peer_id="a", peers=("a", "b", "c"), now=0.0, limits=LIMITS)


def test_every_tick_sends_a_heartbeat_to_every_other_peer() -> None:
    effects = detector().tick(0.5)
    assert sorted(e.destination for e in effects.messages) == ["b", "c"]
    assert all(e.message == Heartbeat(sender="a") for e in effects.messages)


def test_silence_turns_a_peer_suspect_then_down_and_life_turns_it_up() -> None:
    fd = detector()
    fd.heard_from("b", 1.0)
    fd.heard_from("c", 1.0)
    assert [e.name for e in fd.tick(2.0).events] == []
    fd.heard_from("b", 2.4)
    events = fd.tick(2.6)
    assert [(e.name, dict(e.details)["target"]) for e in events.events] == [("peer_suspect", "c")]
    assert fd.state("c") is PeerState.SUSPECT and fd.state("b") is PeerState.UP
    fd.heard_from("b", 4.9)
    events = fd.tick(5.0)
    assert [(e.name, dict(e.details)["target"]) for e in events.events] == [("peer_down", "c")]
    assert fd.is_down("c") and not fd.is_down("b")
    assert fd.tick(6.0).events == []  # no repeated transitions
    back = fd.heard_from("c", 6.1)
    assert [e.name for e in back.events] == ["peer_up"]
    view = {v.peer: v for v in fd.views()}["c"]
    assert view.state is PeerState.UP and view.since == 6.1 and view.last_heard == 6.1


def test_a_peer_never_heard_from_goes_down_counted_from_start() -> None:
    fd = detector()
    fd.tick(1.0)
    assert fd.state("b") is PeerState.UP
    fd.tick(4.0)
    assert fd.is_down("b") and fd.is_down("c")
    assert fd.state("a") is PeerState.UP  # itself, always


def test_unknown_senders_are_ignored() -> None:
    assert detector().heard_from("zz", 1.0).is_empty()
