"""End to end, real peer processes: no value on disk in clear (mapping records and hints), and a
bit flipped in a stored value on one replica is never answered and is repaired by itself.

Sealing does not depend on the transport: these run in plain mode only. Every wait is a poll
with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import plyvel
import pytest

from tests.e2e.harness import Cluster, running_cluster
from tokenvault.config import load_config
from tokenvault.quorum.records import decode_mapping, mapping_key
from tokenvault.quorum.sealing import Sealer

pytestmark = pytest.mark.e2e

OWNER = "alice"
# Distinctive values: found anywhere on disk, whole, only if stored in clear.
VALUES = [f"Zq8-distinctive-{index:03d}-value-kx" for index in range(40)]
REPAIR_DEADLINE_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "cluster") as running:
        yield running


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def tokenize(cluster: Cluster, peer: str, values: list[str]) -> list[str]:
    answer = httpx.post(
        cluster.url(peer) + "/v1/tokenize",
        headers=cluster.headers(OWNER),
        json={"records": [{"ssn": value} for value in values]},
        timeout=20.0,
    )
    assert answer.status_code == 200, answer.text
    return [record["ssn"] for record in answer.json()["records"]]


def detokenize(cluster: Cluster, peer: str, token: str) -> httpx.Response:
    return httpx.post(
        cluster.url(peer) + "/v1/detokenize",
        headers=cluster.headers(OWNER),
        json={"tokens": [token]},
        timeout=20.0,
    )


def hints_held(cluster: Cluster, peer: str) -> int:
    view = httpx.get(cluster.url(peer) + "/v1/admin/node", headers=cluster.admin_headers())
    assert view.status_code == 200, view.text
    return sum(int(h["hints"]) for h in view.json()["hints"])


def data_dir(cluster: Cluster, peer: str) -> Path:
    return next(p.data_dir for p in cluster.init.peers if p.id == peer)


def every_file(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_no_value_is_on_any_disk_in_clear_records_and_hints_alike(cluster: Cluster) -> None:
    tokenize(cluster, "n1", VALUES[:20])
    cluster.stop("n3")
    tokenize(cluster, "n1", VALUES[20:])  # n3 misses these: hints wait for it on n1
    wait_for("n1 holds hints for n3", lambda: hints_held(cluster, "n1") > 0, 20.0)
    files = [f for peer in cluster.peer_ids for f in every_file(data_dir(cluster, peer))]
    assert any(f.suffix in (".log", ".ldb") for f in files)
    contents = {f: f.read_bytes() for f in files}
    assert sum(len(c) for c in contents.values()) > 0
    for value in VALUES:
        found = [str(f) for f, content in contents.items() if value.encode() in content]
        assert not found, f"a value in clear in {found}"
    # The cluster still answers every value (n3 is down: the others hold them).
    for value, token in zip(VALUES[20:], tokenize(cluster, "n2", VALUES[20:]), strict=True):
        answer = detokenize(cluster, "n2", token)
        assert answer.status_code == 200 and answer.json()["results"][0]["value"] == value


def flip_through_leveldb(directory: Path, key: bytes) -> bytes:
    """Flip one bit of the sealed value of `key` by reading and writing the stopped peer's
    LevelDB: the corrupted record goes back as LevelDB's own write (valid checksums)."""
    db = plyvel.DB(str(directory / "leveldb"))
    try:
        raw: bytes | None = db.get(key)
        assert raw is not None
        corrupted = bytearray(raw)
        corrupted[-20] ^= 0x08  # inside the ciphertext (the tag is the last 16 bytes)
        db.put(key, bytes(corrupted), sync=True)
        return raw
    finally:
        db.close()


def flip_in_table_file(directory: Path, key: bytes) -> bytes:
    """Flip one bit of the sealed value of `key` in the bytes of a table file: compact the
    store so the record is in an .ldb file (tables are uncompressed, so the record's bytes are
    there as they are), find them, flip a ciphertext bit in place."""
    db = plyvel.DB(str(directory / "leveldb"))
    try:
        raw: bytes | None = db.get(key)
        assert raw is not None
        db.compact_range()
    finally:
        db.close()
    hits = [
        (path, content.find(raw))
        for path in every_file(directory / "leveldb")
        if path.suffix == ".ldb" and raw in (content := path.read_bytes())
    ]
    assert len(hits) == 1, f"the record is in {len(hits)} table files"
    path, offset = hits[0]
    table = bytearray(path.read_bytes())
    table[offset + len(raw) - 20] ^= 0x08
    path.write_bytes(bytes(table))
    db = plyvel.DB(str(directory / "leveldb"))
    try:
        assert db.get(key) not in (None, raw)  # LevelDB hands the flipped bytes back
    finally:
        db.close()
    return raw


@pytest.mark.parametrize(
    "flip", [flip_through_leveldb, flip_in_table_file], ids=lambda f: f.__name__
)
def test_a_flipped_bit_is_never_answered_and_the_replica_is_repaired(
    cluster: Cluster, flip: Callable[[Path, bytes], bytes]
) -> None:
    values = VALUES[:10]
    tokens = tokenize(cluster, "n1", values)
    victim, token, value = "n2", tokens[3], values[3]
    key = mapping_key(OWNER, token)
    wait_for(
        "every replica holds the mappings",
        lambda: all(detokenize(cluster, p, token).status_code == 200 for p in cluster.peer_ids),
        10.0,
    )
    cluster.stop(victim)
    good = flip(data_dir(cluster, victim), key)
    cluster.start(victim)
    cluster.wait_ready(victim)
    for _ in range(5):
        for peer in cluster.peer_ids:
            answer = detokenize(cluster, peer, token)
            assert answer.status_code == 200, answer.text
            (result,) = answer.json()["results"]
            assert result["found"] and result["value"] == value
    if flip is flip_in_table_file:  # found by a read or by the first scrub, which may be later
        wait_for(
            f"{victim} finds the flip (store_damaged or mapping_repaired)",
            lambda: any(
                e["event"] in ("store_damaged", "mapping_repaired")
                for e in cluster.log_events(victim)
            ),
            REPAIR_DEADLINE_S,
        )
    damaged_lines = [e for e in cluster.log_events(victim) if e["event"] == "store_damaged"]
    if flip is flip_in_table_file and damaged_lines:
        # In a table file LevelDB's block checksum usually sees the flip before the record's
        # tag: a checksum-verified read or the first scrub finds the table damaged, moves the
        # store aside and starts an empty one, which the replicas refill (docs/operations.md,
        # Damaged stores). Where the flip escapes the block checksum (CI met one such run),
        # the record's tag catches it and the repair below is what must happen.
        [damaged] = damaged_lines
        assert damaged["reason"] == "block checksum mismatch"
        assert str(damaged["file"]).endswith(".ldb")
        wait_for(
            f"{victim} holds {OWNER}'s mappings again",
            lambda: owner_converged(cluster, victim),
            REPAIR_DEADLINE_S,
        )
        assert value not in cluster.log(victim)
        assert_holds(cluster, victim, key, good, token, value)
        return
    wait_for(
        f"{victim} logs the repair",
        lambda: any(e["event"] == "mapping_repaired" for e in cluster.log_events(victim)),
        REPAIR_DEADLINE_S,
    )
    events = cluster.log_events(victim)
    corrupt = [e for e in events if e["event"] == "storage_corrupt"]
    repaired = [e for e in events if e["event"] == "mapping_repaired"]
    assert corrupt and repaired
    for line in corrupt + repaired:
        assert line["level"] == "error" and line["owner"] == OWNER
        assert line["token_prefix"] == token[:8]
    assert value not in cluster.log(victim)
    metrics = httpx.get(cluster.url(victim) + "/metrics", headers=cluster.admin_headers())
    assert 'tokenvault_events_total{event="mapping_repaired"} 1' in metrics.text
    assert_holds(cluster, victim, key, good, token, value)


def owner_converged(cluster: Cluster, peer: str) -> bool:
    answer = httpx.get(
        cluster.url(peer) + f"/v1/admin/owners/{OWNER}", headers=cluster.admin_headers()
    )
    return answer.status_code == 200 and answer.json()["converged"] is True


def assert_holds(
    cluster: Cluster, victim: str, key: bytes, good: bytes, token: str, value: str
) -> None:
    """The stopped victim's store holds the good record of key again, and it opens."""
    cluster.stop(victim)
    db = plyvel.DB(str(data_dir(cluster, victim) / "leveldb"))
    try:
        held: bytes | None = db.get(key)
    finally:
        db.close()
    assert held is not None and held == good
    sealer = Sealer(load_config(cluster.init.config_path).secret)
    assert decode_mapping(sealer, OWNER, token, held).value == value
