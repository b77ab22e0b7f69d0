"""The failure detector: each peer's up / suspect / down view of the others, sans-IO.

Theory of operation: every peer sends a Heartbeat to every other peer each
`heartbeat_interval_s`; any message from a peer counts as a sign of life. A peer silent for
`suspect_after_s` is suspect, for `down_after_s` down; a sign of life makes it up again at once.
Transitions are reported as events with the time they happened, so an operator sees when; a
transition of a peer not heard from since this one started says so (`never_heard`): at a
cluster's start the peers come up one by one, and that is not an outage.

Rules: the view is advisory. Coordinators use it to stop waiting for replicas that are down (a
write that cannot reach W live replicas fails at once instead of at its deadline), and hinted
handoff uses it to know when a target came back; correctness never depends on it being right.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from tokenvault.quorum.effects import Effects, Event
from tokenvault.quorum.messages import Envelope, Heartbeat


class PeerState(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorLimits:
    heartbeat_interval_s: float = 0.5
    suspect_after_s: float = 1.5
    down_after_s: float = 4.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerView:
    peer: str
    state: PeerState
    since: float  # when it entered this state
    last_heard: float | None  # None: never heard from since this peer started


class FailureDetector:
    def __init__(
        self,
        *,
        peer_id: str,
        peers: tuple[str, ...],
        now: float,
        limits: DetectorLimits = DetectorLimits(),
    ) -> None:
        assert peer_id in peers
        self._peer_id = peer_id
        self.limits = limits
        self._started = now
        # Others start up: a peer that never answers turns suspect, then down, by itself.
        self._views: dict[str, PeerView] = {
            p: PeerView(peer=p, state=PeerState.UP, since=now, last_heard=None)
            for p in peers
            if p != peer_id
        }

    def set_peers(self, peers: tuple[str, ...], now: float) -> None:
        """The ring changed: new peers are watched from now (up, never heard), peers no
        longer on it are forgotten."""
        views = self._views
        for gone in set(views) - set(peers):
            del views[gone]
        for peer in peers:
            if peer != self._peer_id and peer not in views:
                views[peer] = PeerView(peer=peer, state=PeerState.UP, since=now, last_heard=None)

    def views(self) -> tuple[PeerView, ...]:
        return tuple(self._views[p] for p in sorted(self._views))

    def state(self, peer: str) -> PeerState:
        if peer == self._peer_id:
            return PeerState.UP
        return self._views[peer].state

    def is_down(self, peer: str) -> bool:
        return self.state(peer) is PeerState.DOWN

    def never_heard(self) -> frozenset[str]:
        """Peers not heard from since this peer started."""
        return frozenset(p for p, view in self._views.items() if view.last_heard is None)

    def heard_from(self, peer: str, now: float) -> Effects:
        """Any message from `peer` is a sign of life."""
        view = self._views.get(peer)
        if view is None:
            return Effects()
        effects = Effects()
        state = view.state
        if state is not PeerState.UP:
            effects.events.append(self._transition(peer, state, PeerState.UP, now))
            self._views[peer] = PeerView(peer=peer, state=PeerState.UP, since=now, last_heard=now)
        else:
            self._views[peer] = PeerView(peer=peer, state=state, since=view.since, last_heard=now)
        return effects

    def tick(self, now: float, heartbeat: Callable[[str], Heartbeat] | None = None) -> Effects:
        """Called every heartbeat interval: send heartbeats (`heartbeat(peer)` builds each, with
        the store identities of recovery.py), age silent peers."""
        effects = Effects()
        for peer, view in sorted(self._views.items()):
            silent_s = now - (view.last_heard if view.last_heard is not None else self._started)
            if silent_s >= self.limits.down_after_s:
                target = PeerState.DOWN
            elif silent_s >= self.limits.suspect_after_s:
                target = PeerState.SUSPECT
            else:
                target = PeerState.UP
            if target is not view.state and target is not PeerState.UP:
                never_heard = view.last_heard is None
                effects.events.append(
                    self._transition(peer, view.state, target, now, never_heard=never_heard)
                )
                self._views[peer] = PeerView(
                    peer=peer, state=target, since=now, last_heard=view.last_heard
                )
            message = Heartbeat(sender=self._peer_id) if heartbeat is None else heartbeat(peer)
            effects.messages.append(
                Envelope(source=self._peer_id, destination=peer, message=message)
            )
        return effects

    def _transition(
        self, peer: str, old: PeerState, new: PeerState, now: float, *, never_heard: bool = False
    ) -> Event:
        details: tuple[tuple[str, str | int], ...] = (("target", peer), ("was", old.value))
        if never_heard:
            details += (("never_heard", True),)
        return Event(name=f"peer_{new.value}", details=details)
