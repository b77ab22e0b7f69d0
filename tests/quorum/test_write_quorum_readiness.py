"""PeerCore.owners_without_write_quorum, what /readyz's `no_write_quorum` reads: owners with fewer
than W replicas that this peer's failure detector does not hold down (its own counted while it
serves), checked against a dumb reference over every combination of down peers and owners."""

from __future__ import annotations

import itertools
import random

from tests.quorum.helpers import membership_of
from tests.quorum.test_peer_core import OWNER, SECRET, Peer
from tests.stores import serving_store
from tokenvault.quorum.failure_detector import DetectorLimits
from tokenvault.quorum.messages import Heartbeat
from tokenvault.quorum.peer_core import PeerCore, PeerLimits
from tokenvault.quorum.quorum_config import QuorumConfig

DOWN_AFTER_S = DetectorLimits().down_after_s


def test_two_of_three_replicas_down_leave_no_write_quorum_until_one_is_heard() -> None:
    peer = Peer()  # p1 of p1..p3, N=3, W=2: every peer replicates OWNER
    assert peer.core.owners_without_write_quorum([OWNER]) == 0
    peer.advance_to(DOWN_AFTER_S - 0.1)  # silent others are suspect: still counted
    assert peer.core.owners_without_write_quorum([OWNER]) == 0
    peer.advance_to(DOWN_AFTER_S + 0.1)
    assert peer.core.down_peers() == {"p2", "p3"}
    assert peer.core.owners_without_write_quorum([OWNER]) == 1
    peer.receive("p2", Heartbeat(sender="p2"))
    assert peer.core.owners_without_write_quorum([OWNER]) == 0


def test_it_agrees_with_a_dumb_reference_on_a_larger_ring() -> None:
    peers = tuple(f"p{i}" for i in range(1, 7))
    owners = [f"owner-{i}" for i in range(40)]
    quorum = QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2)
    limits = PeerLimits(detector=DetectorLimits())
    seen: set[int] = set()  # the answers met: the reference must not be trivially 0
    for down in itertools.chain.from_iterable(
        itertools.combinations(peers[1:], size) for size in range(len(peers))
    ):
        core = PeerCore(
            peer_id="p1",
            bootstrap=membership_of(peers, vnodes_per_peer=8),
            quorum=quorum,
            owners=owners,
            storage=serving_store(),
            secret=SECRET,
            rng=random.Random(7),
            now=0.0,
            limits=limits,
        )
        now = DOWN_AFTER_S + 1.0
        for other in peers[1:]:
            if other not in down:
                core.receive(other, [Heartbeat(sender=other)], now - 0.5)
        core.advance(now)
        assert core.down_peers() == set(down)
        expected = sum(
            1
            for owner in owners
            if sum(1 for p in core.preference_list(owner) if p not in down) < 2
        )
        assert core.owners_without_write_quorum(owners) == expected, down
        seen.add(expected)
    assert 0 in seen and len(seen) > 2
