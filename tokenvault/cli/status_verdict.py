"""What `tokenvault status` concludes from the answers it collected (status_probe): each peer's
state, each owner's replicas, the problems found and the exit code. Pure: no I/O.

Rules (the contract of docs/api.md, `status`):
- A peer's STATE: `unreachable` when it did not answer every probe (the ring and, with the admin
  key, its admin view) unless a peer that answered holds it `down`; else `recovering` when it
  says so itself; else the worst state the peers that answered hold of it (`down`, `suspect`,
  `up`).
- Problems, each with its exit code: a peer not `up`, or up but not ready (EXIT_PEERS); peers
  that read different configurations (cluster fingerprints, or ring versions with an owner key:
  EXIT_CONFIGURATION); an owner not converged, or whose inspection did not answer
  (EXIT_NOT_CONVERGED). The exit code is EXIT_HEALTHY without problems, else the first of
  EXIT_PRECEDENCE that a problem has: a configuration that differs makes peers refuse each
  other (they look down), and a peer down leaves its owners unconverged, so the cause outranks
  its consequences.
- Hints held and anti-entropy passes are shown, never problems: hints drain and passes repeat
  on their own once the peers are up, which the problems above already cover. So is a
  membership change in progress (status_membership): its joining or leaving members and its
  transfers are shown; a replica a transfer still fills is left out of its owner's
  convergence; peers at different ring versions are a Note, which never changes the exit code.
- With an owner key there are no admin views: only peer states and ring versions are judged.
"""

from __future__ import annotations

from typing import Any

from tokenvault.cli.json_values import (
    bool_or_none,
    dict_or_none,
    float_or_none,
    int_or_none,
    str_or_none,
)
from tokenvault.cli.status_membership import (
    filling_replicas,
    membership_notes,
    membership_status,
)
from tokenvault.cli.status_model import (
    EXIT_CONFIGURATION,
    EXIT_HEALTHY,
    EXIT_NOT_CONVERGED,
    EXIT_PEERS,
    EXIT_PRECEDENCE,
    AntiEntropy,
    ClusterStatus,
    ConfigurationGroup,
    HintsHeld,
    LastPass,
    OwnerStatus,
    PeerStatus,
    Problem,
    ReplicaStatus,
    RingSummary,
)
from tokenvault.cli.status_probe import Answer, PeerProbe, Probed
from tokenvault.cli.target import Target

_STATE_SEVERITY = {"up": 0, "suspect": 1, "down": 2}


def build_status(probed: Probed, target: Target) -> ClusterStatus:
    """The conclusions from what the probes brought back; probed.ring must be a valid ring."""
    ring = probed.ring
    admin = not probed.owner_key
    rows = [_peer_entry(p) for p in ring["peers"]]
    probes = {peer_id: probed.probe_of(peer_id, address, target) for peer_id, address in rows}
    rings = _bodies({i: None if p is None else p.ring for i, p in probes.items()})
    nodes = _bodies({i: None if p is None or not admin else p.node for i, p in probes.items()})
    members = _bodies(_members_answers(probed)) if admin else {}
    membership = membership_status(members, [peer_id for peer_id, _ in rows])
    filling = filling_replicas(membership)
    views = _views_of_peers(rings)
    peers = [
        _peer_status(peer_id, address, probes[peer_id], ring, views.get(peer_id, {}), admin)
        for peer_id, address in rows
    ]
    groups = _configuration_groups(peers, admin)
    owners = [
        _owner_status(owner, answer, nodes, probed, filling.get(owner, []))
        for owner, answer in sorted(probed.owners.items())
    ]
    problems = _peer_problems(peers) + _configuration_problems(groups) + _owner_problems(owners)
    codes = {problem.exit_code for problem in problems}
    exit_code = next((code for code in EXIT_PRECEDENCE if code in codes), EXIT_HEALTHY)
    summary = RingSummary(
        seen_by=str(ring.get("peer", "?")),
        version=str_or_none(ring.get("version")),
        replicas=int_or_none(ring.get("replicas")),
        write_quorum=int_or_none(ring.get("write_quorum")),
        read_quorum=int_or_none(ring.get("read_quorum")),
    )
    return ClusterStatus(
        ring=summary,
        admin=admin,
        peers=peers,
        configuration_differs=len(groups) > 1,
        configurations=groups,
        owners=owners,
        membership=membership,
        problems=problems,
        notes=membership_notes(membership),
        exit_code=exit_code,
        elapsed_s=round(probed.elapsed_s, 3),
    )


def _members_answers(probed: Probed) -> dict[str, Answer | None]:
    """Every peer's members answer, by the id it answered under: those the ring shown does not
    list too (a peer that joined, when that ring came from a peer not knowing it yet)."""
    return {
        peer_id: probed.peers[url].members
        for peer_id, url in probed.url_of_peer.items()
        if url in probed.peers
    }


def _peer_entry(peer: dict[str, Any]) -> tuple[str, str]:
    return str(peer["id"]), str(peer["address"])


def _body(answer: Answer | None) -> dict[str, Any] | None:
    if answer is None or not answer.ok or not isinstance(answer.body, dict):
        return None
    return answer.body


def _bodies(answers: dict[str, Answer | None]) -> dict[str, dict[str, Any]]:
    """The object bodies of the answers that came, by peer id."""
    bodies = {peer_id: _body(answer) for peer_id, answer in answers.items()}
    return {peer_id: body for peer_id, body in bodies.items() if body is not None}


def _views_of_peers(rings: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """peer id -> {id of a peer that answered -> its view of that peer}, self views left out."""
    views: dict[str, dict[str, dict[str, Any]]] = {}
    for holder, ring in rings.items():
        for view in ring.get("peers", []):
            if isinstance(view, dict) and view.get("id") != holder:
                views.setdefault(str(view.get("id")), {})[holder] = view
    return views


def _peer_status(
    peer_id: str,
    address: str,
    probe: PeerProbe | None,
    ring: dict[str, Any],
    views: dict[str, dict[str, Any]],
    admin: bool,
) -> PeerStatus:
    asked = [] if probe is None else [probe.ring, probe.node] if admin else [probe.ring]
    own_ring = None if probe is None else _body(probe.ring)
    node = None if probe is None or not admin else _body(probe.node)
    answered = bool(asked) and all(_body(answer) is not None for answer in asked)
    held = {holder: str(view.get("state", "?")) for holder, view in sorted(views.items())}
    worst = max(held, key=lambda holder: _STATE_SEVERITY.get(held[holder], 0), default=None)
    worst_state = "up" if worst is None else held[worst]
    serving = None if node is None else str(node.get("state", "?"))
    if not answered:
        state = "down" if worst_state == "down" else "unreachable"
    elif serving == "recovering":
        state = "recovering"
    else:
        state = worst_state if worst_state in _STATE_SEVERITY else "up"
    # FOR: how long the peer holding the state shown has held it (the ring's peer for "up")
    since = _ring_view(ring, peer_id) if state == "up" else views.get(worst or "")
    for_s = since.get("for_s") if since is not None and state in _STATE_SEVERITY else None
    return PeerStatus(
        id=peer_id,
        address=address,
        state=state,
        for_s=float_or_none(for_s),
        views=held,
        answered=answered,
        error=None if answered else _why_unanswered(asked),
        serving=serving,
        ready=bool_or_none(None if node is None else node.get("ready")),
        readiness=None if node is None else str_or_none(node.get("readiness")),
        recovery=dict_or_none(None if node is None else node.get("recovery")),
        uptime_s=float_or_none(None if node is None else node.get("uptime_s")),
        cluster_fingerprint=None if node is None else str_or_none(node.get("cluster_fingerprint")),
        ring_version=None if own_ring is None else str_or_none(own_ring.get("version")),
        hints_held=None if node is None else _hints_held(node),
        anti_entropy=None if node is None else _anti_entropy(node),
    )


def _why_unanswered(asked: list[Answer | None]) -> str:
    failed = [answer.error for answer in asked if answer is not None and answer.error is not None]
    return failed[0] if failed else "not asked"


def _ring_view(ring: dict[str, Any], peer_id: str) -> dict[str, Any] | None:
    return next((p for p in ring["peers"] if p.get("id") == peer_id), None)


def _hints_held(node: dict[str, Any]) -> list[HintsHeld]:
    hints = node.get("hints")
    return [
        HintsHeld(target=str(h.get("target", "?")), hints=int(h.get("hints", 0)))
        for h in (hints if isinstance(hints, list) else [])
        if isinstance(h, dict) and isinstance(h.get("hints", 0), int)
    ]


def _anti_entropy(node: dict[str, Any]) -> AntiEntropy:
    view = node.get("anti_entropy")
    view = view if isinstance(view, dict) else {}
    last = view.get("last_pass")
    last_pass = None
    if isinstance(last, dict) and isinstance(last.get("finished_s_ago"), int | float):
        last_pass = LastPass(str(last.get("outcome", "?")), float(last["finished_s_ago"]))
    return AntiEntropy(enabled=view.get("enabled") is not False, last_pass=last_pass)


def _configuration_groups(peers: list[PeerStatus], admin: bool) -> list[ConfigurationGroup]:
    """The peers that answered, grouped by what they read: the cluster fingerprint (admin), else
    the ring version."""
    kind = "cluster_fingerprint" if admin else "ring_version"
    readers: dict[str, list[str]] = {}
    for peer in peers:
        read = peer.cluster_fingerprint if admin else peer.ring_version
        if read is not None:
            readers.setdefault(read, []).append(peer.id)
    groups = [ConfigurationGroup(kind, read, sorted(ids)) for read, ids in readers.items()]
    return sorted(groups, key=lambda group: group.peers)


def _owner_status(
    owner: str,
    answer: Answer | None,
    nodes: dict[str, dict[str, Any]],
    probed: Probed,
    filling: list[str],
) -> OwnerStatus:
    hints_for: dict[str, int] = {}
    for node in nodes.values():
        for held in _hints_held(node):
            hints_for[held.target] = hints_for.get(held.target, 0) + held.hints
    inspected_by = next(
        (peer for peer, url in probed.url_of_peer.items() if url == probed.inspected_at), None
    )
    view = _body(answer)
    if view is None:
        error = "not answered" if answer is None or answer.error is None else answer.error
        return OwnerStatus(owner, None, None, inspected_by, error, [], filling)
    replicas = [
        _replica_status(r, hints_for.get(str(r.get("peer")), 0) if nodes else None)
        for r in view.get("replicas", [])
        if isinstance(r, dict)
    ]
    converged = view.get("converged") is True
    if filling:  # judged without the replicas still being filled, as the peer cannot know
        converged = _agree([r for r in replicas if r.peer not in filling])
    return OwnerStatus(
        owner=owner,
        converged=converged,
        epochs_agree=bool_or_none(view.get("epochs_agree")),
        inspected_by=inspected_by,
        error=None,
        replicas=replicas,
        filling=filling,
    )


def _agree(replicas: list[ReplicaStatus]) -> bool:
    """Every replica answered, with one digest and one decided epoch."""
    return (
        bool(replicas)
        and all(r.answered for r in replicas)
        and len({r.digest for r in replicas}) == 1
        and len({(r.active_epoch, r.active_epoch_id) for r in replicas}) == 1
    )


def _replica_status(replica: dict[str, Any], hints_for_it: int | None) -> ReplicaStatus:
    answered = replica.get("reachable") is True
    return ReplicaStatus(
        peer=str(replica.get("peer", "?")),
        answered=answered,
        active_epoch=int_or_none(replica.get("active_epoch")) if answered else None,
        active_epoch_id=str_or_none(replica.get("active_epoch_id")) if answered else None,
        token_count=int_or_none(replica.get("token_count")) if answered else None,
        digest=str_or_none(replica.get("digest")) if answered else None,
        hints_for_it=hints_for_it,
    )


def _peer_problems(peers: list[PeerStatus]) -> list[Problem]:
    problems: list[Problem] = []
    for peer in peers:
        if peer.state == "unreachable":
            message = f"{peer.id} unreachable: {peer.error}"
        elif peer.state in ("down", "suspect"):
            holders = ", ".join(h for h, state in peer.views.items() if state == peer.state)
            message = f"{peer.id} {peer.state} as {holders} see it"
            if not peer.answered:
                message += f"; {peer.error}"
        elif peer.state == "recovering":
            message = f"{peer.id} recovering a lost store"
        elif peer.ready is False:
            message = f"{peer.id} not ready: {peer.readiness}"
        else:
            continue
        problems.append(Problem(EXIT_PEERS, peer.id, message))
    return problems


def _configuration_problems(groups: list[ConfigurationGroup]) -> list[Problem]:
    if len(groups) < 2:
        return []
    readings = "; ".join(f"{', '.join(g.peers)} read {g.shown()}" for g in groups)
    message = (
        f"configuration differs ({readings}): the peers refuse each other's messages;"
        " give every peer the same cluster.toml"
    )
    return [Problem(EXIT_CONFIGURATION, "configuration", message)]


def _owner_problems(owners: list[OwnerStatus]) -> list[Problem]:
    problems: list[Problem] = []
    for owner in owners:
        if owner.converged is None:
            message = f"{owner.owner}: convergence unknown: {owner.error}"
        elif not owner.converged:
            message = f"{owner.owner} not converged: {_why_not_converged(owner)}"
        else:
            continue
        problems.append(Problem(EXIT_NOT_CONVERGED, owner.owner, message))
    return problems


def _why_not_converged(owner: OwnerStatus) -> str:
    judged = [r for r in owner.replicas if r.peer not in owner.filling]
    silent = [r.peer for r in judged if not r.answered]
    answered = [r for r in judged if r.answered]
    reasons = [f"{', '.join(silent)} did not answer"] if silent else []
    if len({r.digest for r in answered}) > 1:
        reasons.append(
            "replicas differ ("
            + ", ".join(f"{r.peer} {r.token_count} tokens" for r in answered)
            + ")"
        )
    if len({(r.active_epoch, r.active_epoch_id) for r in answered}) > 1:
        reasons.append(
            "epochs differ (" + ", ".join(f"{r.peer} {r.active_epoch}" for r in answered) + ")"
        )
    return "; ".join(reasons) or "the replicas' views differ"
