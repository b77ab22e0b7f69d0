"""Consistent-hash ring that maps an owner id to an ordered list of peers.

Every peer is an equal member and owns ``vnodes_per_peer`` virtual nodes; the
preference list of an owner is the first distinct peers met clockwise from the
owner's point. Rules: this module is pure (no I/O, no clock, no randomness) and
deterministic across processes and machines: points come from blake2b (never
the builtin ``hash()``), so equal membership gives equal rings and versions.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotation only; nothing beyond hashlib/struct/bisect/typing at runtime
    from collections.abc import Iterable

__all__ = ["RING_SIZE", "HashRing", "ring_hash"]

RING_SIZE = 2**64
"""Points on the ring are integers in ``0 .. RING_SIZE - 1``."""

_VERSION_DOMAIN = b"tokenvault.ring.v1\x00"


def ring_hash(key: str) -> int:
    """The ring point of ``key``: blake2b, 8-byte digest read as big-endian unsigned."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    point: int = struct.unpack(">Q", digest)[0]
    return point


class HashRing:
    """Consistent-hash ring of equal peers with virtual nodes.

    Immutable after construction. Virtual node ``i`` of peer ``p`` sits at
    ``ring_hash(f"{p}#{i}")``; vnodes are ordered by ``(point, peer_id)`` so
    that even a (vanishingly unlikely) point collision has a deterministic
    order. An owner at position ``x`` belongs to the first vnode whose point is
    ``>= x``, wrapping past ``2**64 - 1`` to the smallest point.
    """

    __slots__ = ("_peer_ids", "_peers", "_points", "_version", "_vnodes_per_peer")

    def __init__(self, peer_ids: Iterable[str], vnodes_per_peer: int) -> None:
        if isinstance(peer_ids, str):
            raise TypeError("peer_ids must be an iterable of ids, not a single str")
        ids = list(peer_ids)
        if not ids:
            raise ValueError("a hash ring needs at least one peer")
        for peer_id in ids:
            if not isinstance(peer_id, str):
                raise TypeError(f"peer id must be str, got {type(peer_id).__name__}")
            if not peer_id:
                raise ValueError("peer ids must be non-empty strings")
        if len(set(ids)) != len(ids):
            dupes = sorted({p for p in ids if ids.count(p) > 1})
            raise ValueError(f"duplicate peer ids: {dupes}")
        if isinstance(vnodes_per_peer, bool) or not isinstance(vnodes_per_peer, int):
            raise TypeError("vnodes_per_peer must be an int")
        if vnodes_per_peer < 1:
            raise ValueError(f"vnodes_per_peer must be >= 1, got {vnodes_per_peer}")

        sorted_ids = tuple(sorted(ids))
        vnodes = sorted(
            (ring_hash(f"{peer_id}#{i}"), peer_id)
            for peer_id in sorted_ids
            for i in range(vnodes_per_peer)
        )
        self._peer_ids: tuple[str, ...] = sorted_ids
        self._vnodes_per_peer: int = vnodes_per_peer
        self._points: tuple[int, ...] = tuple(point for point, _ in vnodes)
        self._peers: tuple[str, ...] = tuple(peer for _, peer in vnodes)
        self._version: str = _membership_version(sorted_ids, vnodes_per_peer)

        assert len(self._points) == len(sorted_ids) * vnodes_per_peer
        assert all(self._points[i] <= self._points[i + 1] for i in range(len(self._points) - 1))
        assert all(0 <= p < RING_SIZE for p in self._points)
        assert set(self._peers) == set(sorted_ids)

    @property
    def peer_ids(self) -> tuple[str, ...]:
        """The member peer ids, sorted."""
        return self._peer_ids

    @property
    def vnodes_per_peer(self) -> int:
        return self._vnodes_per_peer

    @property
    def version(self) -> str:
        """16 hex chars identifying (sorted peers, vnodes_per_peer); equal on every peer."""
        return self._version

    def position(self, owner_id: str) -> int:
        """The owner's point on the ring (``0 .. 2**64 - 1``)."""
        return ring_hash(owner_id)

    def preference_list(self, owner_id: str, replica_count: int) -> tuple[str, ...]:
        """The first ``replica_count`` distinct peers clockwise from the owner's point."""
        peer_count = len(self._peer_ids)
        if isinstance(replica_count, bool) or not isinstance(replica_count, int):
            raise TypeError("replica_count must be an int")
        if not 1 <= replica_count <= peer_count:
            raise ValueError(
                f"replica_count must be in 1..{peer_count} (number of peers), got {replica_count}"
            )
        vnode_count = len(self._points)
        start = bisect_left(self._points, self.position(owner_id))
        chosen: list[str] = []
        seen: set[str] = set()
        for step in range(vnode_count):
            peer = self._peers[(start + step) % vnode_count]
            if peer not in seen:
                seen.add(peer)
                chosen.append(peer)
                if len(chosen) == replica_count:
                    break
        result = tuple(chosen)
        assert len(result) == replica_count
        assert len(set(result)) == replica_count
        return result

    def token_ranges(self) -> list[tuple[int, int, str]]:
        """``(start_exclusive, end_inclusive, peer)`` per vnode, in ring order.

        The first range wraps: it starts after the largest point and runs through
        ``2**64 - 1`` and ``0`` to the smallest point. With a single vnode in all,
        the one range ``(p, p]`` stands for the whole ring.
        """
        points = self._points
        return [
            (points[i - 1], points[i], self._peers[i])  # i - 1 == -1 wraps to the last
            for i in range(len(points))
        ]

    def __repr__(self) -> str:
        return (
            f"HashRing(peers={len(self._peer_ids)}, vnodes_per_peer={self._vnodes_per_peer}, "
            f"version={self._version})"
        )


def _membership_version(sorted_ids: tuple[str, ...], vnodes_per_peer: int) -> str:
    """Unambiguous (length-prefixed) encoding of the membership, hashed to 16 hex chars."""
    h = hashlib.blake2b(digest_size=8)
    h.update(_VERSION_DOMAIN)
    h.update(struct.pack(">Q", vnodes_per_peer))
    h.update(struct.pack(">Q", len(sorted_ids)))
    for peer_id in sorted_ids:
        raw = peer_id.encode("utf-8")
        h.update(struct.pack(">Q", len(raw)))
        h.update(raw)
    version = h.hexdigest()
    assert len(version) == 16
    return version
