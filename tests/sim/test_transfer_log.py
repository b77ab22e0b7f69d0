"""transfer-commits-complete on hand-made transfer records (sim/transfer_log.py): a commit is
judged against what W old replicas held when the transfer's first record became durable."""

from __future__ import annotations

from tokenvault.quorum.messages import Mapping
from tokenvault.quorum.transfer_records import TransferRecord, encode_transfer
from tokenvault.sim.transfer_log import INVARIANT, TransferLog

OLD = ("p1", "p2", "p3")


def _mapping(token: str) -> Mapping:
    return Mapping(owner="alice", token=token, value=f"v-{token}", field="ssn", epoch=1)


class _Disks:
    """What each peer holds of alice, by token: the log reads it as the cluster would."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, Mapping]] = {p: {} for p in (*OLD, "p4")}

    def put(self, peer: str, *tokens: str) -> None:
        for token in tokens:
            self.held[peer][token] = _mapping(token)

    def holdings(self, peer: str, owner: str) -> dict[str, Mapping]:
        assert owner == "alice"
        return dict(self.held.get(peer, {}))


def _record(step: str) -> bytes:
    return encode_transfer(
        TransferRecord(version=2, owner="alice", old=OLD, step=step, verified=("p1",))
    )


def _log(disks: _Disks) -> TransferLog:
    return TransferLog(write_quorum=2, holdings=disks.holdings)


def test_a_commit_lacking_a_mapping_w_old_replicas_held_at_the_start_is_reported() -> None:
    disks = _Disks()
    disks.put("p1", "a")
    disks.put("p2", "a", "b")
    disks.put("p3", "b", "c")  # b on W = 2 of the old set; c on one only
    log = _log(disks)
    log.on_durable("p4", _record("epochs"), 1.0)
    disks.put("p4", "a", "c")  # a pass from p1 alone, and c by anti-entropy
    log.on_durable("p4", _record("copying"), 2.0)
    assert log.observations == []
    log.on_durable("p4", _record("committed"), 3.0)
    (observation,) = log.observations
    assert observation.invariant == INVARIANT
    assert observation.tokens == ("b",)
    assert "p4 committed the transfer of alice at ring version 2" in observation.summary
    assert log.commits_judged == 1


def test_a_commit_holding_every_such_mapping_passes_and_later_writes_are_not_asked() -> None:
    disks = _Disks()
    disks.put("p1", "a")
    disks.put("p2", "a")
    log = _log(disks)
    log.on_durable("p4", _record("epochs"), 1.0)
    disks.put("p1", "late")
    disks.put("p2", "late")  # written after the start, behind the pass: the joint write's
    disks.put("p4", "a")
    log.on_durable("p4", _record("committed"), 3.0)
    log.on_durable("p4", _record("committed"), 4.0)  # judged once
    assert log.observations == [] and log.commits_judged == 1


def test_a_wiped_old_replica_no_longer_counts_and_a_wiped_target_starts_again() -> None:
    disks = _Disks()
    disks.put("p1", "a")
    disks.put("p2", "a")
    log = _log(disks)
    log.on_durable("p4", _record("epochs"), 1.0)
    log.on_wipe("p2")  # a then on one old replica only
    log.on_durable("p4", _record("committed"), 2.0)
    assert log.observations == []

    log = _log(disks)
    log.on_durable("p4", _record("epochs"), 1.0)
    log.on_wipe("p4")
    log.on_durable("p4", _record("committed"), 2.0)  # its start is unknown: not judged
    assert log.observations == [] and log.commits_unjudged == 1 and log.commits_judged == 0


def test_a_forgotten_or_corrupt_record_is_not_a_transfer() -> None:
    log = _log(_Disks())
    log.on_durable("p4", None, 1.0)
    log.on_durable("p4", b"{not json", 1.0)
    assert log.observations == [] and log.commits_judged == 0
