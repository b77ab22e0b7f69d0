"""The peer links of one peer, following the ring: one `PeerLink` per other peer it may send to,
added and removed as the learned membership changes (docs/membership.md §5 step 4).

Rules:
- `follow(addresses)` makes the links exactly those of `addresses` (peer id -> "host:port"):
  a link whose peer left, or whose address changed, is stopped (its task cancelled, its queue
  dropped: losing a message is always safe, coordinators resend); a new one starts at once when
  the links run, else with `run`.
- `send_nowait` never blocks; a message for a peer with no link (not in the ring this peer
  learned: a peer that asked for the ring before it joined) is dropped and counted as
  unroutable, never an error.
- An address that is not host:port (a membership holds any printable text) gets no link: its
  messages count as unroutable.
- Every link signs with this peer's key for its receiver (peer_auth.PeerSigner); the receiver
  derives a joined peer's key from the cluster secret alike.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from tokenvault.config import parse_host_port
from tokenvault.http.peer_auth import PeerSigner
from tokenvault.http.peer_transport import PeerLink


@dataclass(slots=True)
class _Running:
    link: PeerLink
    address: str
    scope: trio.CancelScope


class PeerLinks:
    def __init__(
        self,
        *,
        local_peer_id: str,
        key: bytes,
        incarnation: str,
        fingerprint: str,
        link_context: ssl.SSLContext | None,
    ) -> None:
        self._local_peer_id = local_peer_id
        self._key = key
        self._incarnation = incarnation
        self._fingerprint = fingerprint
        self._link_context = link_context
        self._links: dict[str, _Running] = {}
        self._nursery: trio.Nursery | None = None
        self.unroutable = 0  # messages dropped: no link to their destination

    @property
    def links(self) -> dict[str, PeerLink]:
        """The links now, by peer id (a new dict: the caller may keep it)."""
        return {peer: running.link for peer, running in self._links.items()}

    def follow(self, addresses: Mapping[str, str]) -> None:
        wanted = {p: a for p, a in addresses.items() if p != self._local_peer_id}
        for peer, running in list(self._links.items()):
            if wanted.get(peer) != running.address:
                running.scope.cancel()
                del self._links[peer]
        for peer, address in wanted.items():
            if peer not in self._links:
                self._add(peer, address)

    def send_nowait(self, destination: str, wire: bytes) -> bool:
        """Queues one encoded message; False (counted) when there is no link to it."""
        running = self._links.get(destination)
        if running is None:
            self.unroutable += 1
            return False
        running.link.send_nowait(wire)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs every link, and each one `follow` adds later, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for running in self._links.values():
                nursery.start_soon(self._run_link, running)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _add(self, peer: str, address: str) -> None:
        host_port = parse_host_port(address)
        if host_port is None:
            return
        host, port = host_port
        link = PeerLink(
            local_peer_id=self._local_peer_id,
            peer_id=peer,
            host=host,
            port=port,
            signer=PeerSigner(
                sender=self._local_peer_id,
                receiver=peer,
                key=self._key,
                incarnation=self._incarnation,
                fingerprint=self._fingerprint,
            ),
            link_context=self._link_context,
        )
        running = self._links[peer] = _Running(link=link, address=address, scope=trio.CancelScope())
        if self._nursery is not None:
            self._nursery.start_soon(self._run_link, running)

    @staticmethod
    async def _run_link(running: _Running) -> None:
        with running.scope:
            await running.link.run()
