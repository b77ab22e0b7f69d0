"""The replica's digests (merkle.py) built page by page while the replica serves, against a
full scan of the store."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.quorum.helpers import SEALER
from tokenvault.quorum.merkle import OwnerDigests
from tokenvault.quorum.messages import InsertRequest, Mapping
from tokenvault.quorum.records import encode_mapping, mapping_key
from tokenvault.quorum.replica import Replica
from tokenvault.store.memory_store import MemoryStore


def mapping(token: str, *, owner: str, value: str = "v") -> Mapping:
    return Mapping(owner=owner, token=token, value=value, field="card", epoch=1)


TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=60, deadline=None)
@given(
    held=st.sets(st.integers(0, 400), max_size=60),
    steps=st.lists(
        st.tuples(
            st.sampled_from(("insert", "page", "refused", "sync")),
            st.lists(st.integers(0, 400), min_size=1, max_size=8),
        ),
        max_size=30,
    ),
    owners=st.sampled_from((("alice",), ("alice", "bob"), ("a", "alice", "zed"))),
)
def test_digests_built_in_pages_among_inserts_equal_a_full_rebuild(
    held: set[int], steps: list[tuple[str, list[int]]], owners: tuple[str, ...]
) -> None:
    """A peer serves while its digests are built page by page (merkle.py): whatever inserts,
    refused stages and syncs come between the pages, the digests once complete equal those a
    full scan of the store computes, and an owner is `ready` only with its whole range built."""

    def token(index: int) -> str:
        return "tok_" + TOKEN_CHARS[index % 64] + f"{index:05d}"

    def owner_of(index: int) -> str:
        return owners[index % len(owners)]

    store = MemoryStore()
    store.stage(
        [
            (
                mapping_key(owner_of(i), token(i)),
                encode_mapping(SEALER, mapping(token(i), owner=owner_of(i), value=f"v{i}")),
            )
            for i in held
        ]
    )
    store.sync()
    replica = Replica(peer_id="r1", storage=store, sealer=SEALER, digests_built_in_pages=True)
    digests = replica.digests
    assert not digests.complete
    ops = 0
    for kind, indexes in steps:
        if kind == "page":
            digests.rebuild_page(store, len(indexes))
            continue
        if kind == "sync":
            store.sync()
            continue
        for owner in owners:
            batch = tuple(
                mapping(token(i), owner=owner, value=f"v{i}")
                for i in sorted(set(indexes))
                if owner_of(i) == owner
            )
            if not batch:
                continue
            ops += 1
            request = InsertRequest(op_id=f"op-{ops}", owner=owner, mappings=batch)
            effects = replica.on_message("coord", request)
            if kind == "refused":  # the store refused them: the driver makes the replica forget
                replica.forget_unstaged(effects.writes)
            else:
                store.stage(effects.writes)
    while not digests.complete:
        digests.rebuild_page(store, 7)
    rebuilt = OwnerDigests()
    rebuilt.rebuild(store)
    for owner in owners:
        assert digests.ready(owner)
        assert (digests.root(owner), digests.count(owner)) == (
            rebuilt.root(owner),
            rebuilt.count(owner),
        )


def test_an_owner_is_ready_only_once_the_build_passed_its_whole_range() -> None:
    store = MemoryStore()
    for owner in ("alice", "bob"):
        store.stage(
            [
                (
                    mapping_key(owner, f"tok_A{i}"),
                    encode_mapping(SEALER, mapping(f"tok_A{i}", owner=owner)),
                )
                for i in range(3)
            ]
        )
    replica = Replica(peer_id="r1", storage=store, sealer=SEALER, digests_built_in_pages=True)
    digests = replica.digests
    assert not digests.ready("alice") and not digests.ready("bob")
    assert digests.rebuild_page(store, 3) == 3  # alice's three
    assert not digests.ready("bob")
    assert digests.rebuild_page(store, 3) == 3  # bob's three: alice's range is passed
    assert digests.ready("alice") and not digests.complete
    assert digests.rebuild_page(store, 3) == 0 and digests.complete and digests.ready("bob")
