"""The simulated cluster: the peers on one ring, the network between them, the clients' link,
and the faults applied to them.

Rules:
- Messages between peers cross the Network; clients reach every peer over a reliable link of
  fixed latency (client-side faults are a peer that is down, paused or crashes mid-operation).
- A fault action is applied as scheduled; `heal()` ends every fault at once: the network heals,
  crashed peers restart from their durable state, paused peers resume, aimed crashes disarm.
- `snapshot()` is what the checker sees of the peers at the end: durable mappings, operations in
  flight, unsynced writes and held outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokenvault.quorum.messages import Envelope, Mapping
from tokenvault.ring.hash_ring import HashRing
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Engine
from tokenvault.sim.faults import FaultAction, FaultKind, FaultMix, LinkFaults
from tokenvault.sim.network import Network
from tokenvault.sim.peer import ClientAnswer, ClientRequest, CoreError, PeerState, SimPeer

PeerFactory = Callable[..., SimPeer]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaState:
    """One peer at the end of a run, as the checker sees it."""

    peer: str
    up: bool
    mappings: dict[tuple[str, str], Mapping]  # durable, by (owner, token)
    operations_in_flight: int
    unsynced: bool
    held_effects: int


class SimCluster:
    def __init__(
        self,
        *,
        config: SimConfig,
        engine: Engine,
        mix: FaultMix,
        links: dict[tuple[str, str], LinkFaults],
        peer_factory: PeerFactory | None = None,
    ) -> None:
        self._config = config
        self._engine = engine
        self.ring = HashRing(config.peer_ids, config.vnodes_per_peer)
        self.network = Network(engine, links, self._deliver)
        factory = SimPeer if peer_factory is None else peer_factory
        self.peers: dict[str, SimPeer] = {
            peer_id: factory(
                peer_id,
                engine=engine,
                ring=self.ring,
                quorum=config.quorum,
                limits=config.coordinator_limits,
                fsync_s=mix.fsync_s,
                client_latency_s=config.client_latency_s,
                send=self.network.send,
            )
            for peer_id in config.peer_ids
        }

    def preference_list(self, owner: str) -> tuple[str, ...]:
        return self.ring.preference_list(owner, self._config.replica_count)

    # -- traffic -------------------------------------------------------------------------------

    def _deliver(self, envelope: Envelope) -> None:
        self.peers[envelope.destination].receive(envelope)

    def submit(
        self, peer_id: str, request: ClientRequest, sink: Callable[[ClientAnswer], None]
    ) -> None:
        peer = self.peers[peer_id]
        self._engine.after(
            self._config.client_latency_s, lambda: peer.client_request(request, sink)
        )

    def durable_copies(self, mapping: Mapping) -> int:
        return sum(
            1
            for peer_id in self.preference_list(mapping.owner)
            if self.peers[peer_id].durably_holds(mapping)
        )

    # -- faults --------------------------------------------------------------------------------

    def apply(self, action: FaultAction) -> None:
        kind = action.kind
        if kind is FaultKind.PARTITION:
            assert action.partition is not None
            self.network.start_partition(action.partition)
        elif kind is FaultKind.PARTITION_END:
            self.network.end_partition()
        else:
            peer = self.peers[action.peer]
            {
                FaultKind.CRASH: peer.crash,
                FaultKind.ARM_CRASH: peer.arm_crash,
                FaultKind.RESTART: peer.disarm_and_restart,
                FaultKind.PAUSE: peer.pause,
                FaultKind.RESUME: peer.resume,
            }[kind]()

    def heal(self) -> None:
        self._engine.record("heal")
        self.network.heal()
        for peer in self.peers.values():
            peer.disarm()
            peer.restart()
            peer.resume()

    # -- observation ---------------------------------------------------------------------------

    def core_errors(self) -> list[CoreError]:
        return [error for peer in self.peers.values() for error in peer.core_errors]

    def snapshot(self) -> tuple[ReplicaState, ...]:
        return tuple(
            ReplicaState(
                peer=peer.peer_id,
                up=peer.state is PeerState.UP,
                mappings=peer.durable_mappings(),
                operations_in_flight=peer.operations_in_flight(),
                unsynced=peer.store.has_unsynced(),
                held_effects=peer.held_effects(),
            )
            for peer in self.peers.values()
        )
