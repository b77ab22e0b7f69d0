"""Membership changes drawn from the seed: joins, removes and replaces (docs/simulation.md,
membership faults; docs/membership.md §6).

Rules:
- Drawn from generators of their own (`faults/membership-mix`, `faults/membership`), after and
  apart from every other fault, so a seed's other faults are what they were before changes
  existed; with no change asked for nothing is drawn at all.
- A change names its kind, its moment in the fault window and a draw: which member it removes
  or replaces, and through which member the operator asks, are picked from the draw when it is
  applied (operator.py), among the members of the ring the cluster holds then, so a change
  always names a member.
- Kinds: `join` (a spare peer starts empty with a join address and asks to be added by itself),
  `remove` (the operator removes a member), `replace-dead` (the replaced member is killed and
  its disk wiped first, for good, then a spare replaces it), `replace-live` (the replaced member
  keeps running and serves as a source).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from tokenvault.sim.engine import rng_for
from tokenvault.sim.faults import FaultMix, LinkFaults, bad_link

CHANGE_WINDOW = (0.1, 0.8)  # share of the fault window where changes start


class ChangeKind(enum.Enum):
    JOIN = "join"
    REMOVE = "remove"
    REPLACE_DEAD = "replace-dead"
    REPLACE_LIVE = "replace-live"


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipAction:
    at_s: float
    kind: ChangeKind
    draw: int  # picks the member removed or replaced and the member asked, when applied

    def describe(self) -> str:
        return f"{self.kind.value} draw={self.draw}"


def plan_membership(seed: int, count: int, faults_end_s: float) -> tuple[MembershipAction, ...]:
    """`count` changes in time order, within the fault window."""
    if count <= 0:
        return ()
    kinds = _kind_weights(seed)
    rng = rng_for(seed, "faults/membership")
    actions = []
    for _ in range(count):
        at_s = rng.uniform(faults_end_s * CHANGE_WINDOW[0], faults_end_s * CHANGE_WINDOW[1])
        kind = rng.choices(list(ChangeKind), weights=kinds)[0]
        actions.append(MembershipAction(at_s=at_s, kind=kind, draw=rng.getrandbits(32)))
    actions.sort(key=lambda a: (a.at_s, a.kind.value, a.draw))
    return tuple(actions)


def _kind_weights(seed: int) -> list[float]:
    """How this seed weighs the kinds (a mix, as the other faults have): some seeds mostly
    join, some mostly replace dead peers."""
    rng = rng_for(seed, "faults/membership-mix")
    return [rng.choice((1.0, 2.0, 4.0)) for _ in ChangeKind]


def spare_link_faults(
    seed: int, mix: FaultMix, peer_ids: Sequence[str], spare_ids: Sequence[str]
) -> dict[tuple[str, str], LinkFaults]:
    """Every directed link to and from a spare peer: the mix's typical link, some of them bad
    (from a generator of their own: the bootstrap's links are drawn as before)."""
    rng = rng_for(seed, "faults/spare-links")
    everyone = [*peer_ids, *spare_ids]
    links: dict[tuple[str, str], LinkFaults] = {}
    for spare in spare_ids:
        for other in everyone:
            if other == spare:
                continue
            for link in ((spare, other), (other, spare)):
                if link not in links:
                    bad = rng.random() < mix.bad_link_share
                    links[link] = bad_link(mix.link) if bad else mix.link
    return links
