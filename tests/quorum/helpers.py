"""Test doubles shared by the core tests of this package."""

from __future__ import annotations

from collections.abc import Iterable

from tokenvault.quorum.messages import EpochValue, Mapping
from tokenvault.quorum.records import StorageView
from tokenvault.quorum.sealing import Sealer
from tokenvault.ring.membership import Membership, bootstrap_membership


class FirstReadMisses:
    """A storage view that lies: the first read of each key under `prefix` finds nothing, every
    later read the truth. A core's handler reads first and decides on the lie, as a handler
    that read a stale copy would; the check at its write reads again and sees the truth."""

    def __init__(self, storage: StorageView, prefix: bytes) -> None:
        self._storage = storage
        self._prefix = prefix
        self._read: set[bytes] = set()

    def get(self, key: bytes) -> bytes | None:
        if key.startswith(self._prefix) and key not in self._read:
            self._read.add(key)
            return None
        return self._storage.get(key)

    def scan(
        self, prefix: bytes, *, start_after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        return self._storage.scan(prefix, start_after=start_after, limit=limit)


class SyntheticTokens(Sealer):
    """A sealer for tests about insert-once, fencing and quorums, whose readable synthetic
    tokens ("tok_A") are no keyed hash of their values: values are sealed and their tags
    checked as in production, and the token check passes. The token check has tests of its
    own (test_sealing.py, test_replica.py) on real tokens."""

    def token_matches(self, mapping: Mapping, decided: EpochValue) -> bool:
        return True


TEST_SECRET = b"t" * 32
SEALER = SyntheticTokens(TEST_SECRET)


def membership_of(
    peers: Iterable[str], *, vnodes_per_peer: int, replica_count: int = 3
) -> Membership:
    """A bootstrap ring of `peers` (each at a made-up address), as cluster.toml would give."""
    return bootstrap_membership(
        ((peer, f"{peer}.test:7000") for peer in peers),
        replica_count=replica_count,
        vnodes_per_peer=vnodes_per_peer,
    )
