"""Mutation tests: break one rule of production code on purpose, and the sweep must fail with a
readable report whose replay command reproduces the same digest and violations.

Every mutation patches a module under tokenvault/quorum/ (the cores and the peer core that both
node.py and the simulator run), never the simulator: a rule the sweep holds is a rule production
holds. They reach into private methods on purpose: the rule they hold is what is being broken.
- early-ack: the peer core releases its replica's answers before the store is durable (it skips
  "persist before send"), so an acknowledgement no longer means fsync'd;
- write-quorum-one: the coordinator counts a write (or a repair) done after one durable
  acknowledgement instead of W. The coordinator's own assertion (`_require_write_quorum`) refuses
  the success: the peer core contains it, so no client sees the bug, and the run fails on
  `no-core-exception`;
- write-quorum-one-unasserted: the same with that assertion off, so that the checker's own
  client-visible invariants are shown to catch it too;
- no-blocking-read-repair: a read answers as soon as R replicas did, without first writing a
  mapping found on fewer than W replicas back to W (the same assertion catches it);
- forgetful-acceptor: an acceptor's prepare ignores the promise it stored (as an acceptor that
  kept promises in memory would after a restart);
- proposer-skips-adoption: a proposer with a majority of promises proposes its own value even
  when an acceptor reported an accepted one;
- hints-deleted-early: hinted handoff deletes a hint as soon as it sends it, before the
  target's durable acknowledgement;
- anti-entropy-skips-a-bucket: anti-entropy never repairs the first bucket that differs;
- recovering-peer-votes: a peer that lost its store (a wiped disk) answers Paxos before it
  recovered (quorum/recovery.py); the amnesia it brings chooses a second value for an epoch.
  The random sweep catches it rarely (a wipe must meet dueling rotates across a partition: the
  first catching seed was 572), so its random sweep runs in the long sweep only
  (TOKENVAULT_SIM_SEEDS >= 1000); tests/sim/test_disk_wipe.py holds the targeted scenario that
  catches it on every seed, in every run.
- skips-read-verification: a replica reads its records without checking them: the sealed value
  is decrypted without its tag (AES-GCM is counter mode: a flipped ciphertext bit flips the
  same plaintext bit; a flipped nonce bit gives garbage) and no token is checked, so a bit
  flipped in a stored record (the simulator's fault) is answered as a value.
Since hinted handoff and anti-entropy copy an acknowledged mapping back from any replica that
holds it, early-ack now rarely loses a write a client could miss: `answers-are-durable` catches
it, no client-visible invariant does within the sweep.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.sim.conftest import sweep_seed_count
from tokenvault.quorum import peer_core as peer_core_module
from tokenvault.quorum import recovery
from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.anti_entropy import AntiEntropy
from tokenvault.quorum.coordinator import Coordinator, _Phase
from tokenvault.quorum.effects import Effects
from tokenvault.quorum.epoch_coordinator import EpochCoordinator
from tokenvault.quorum.hinted_handoff import HintedHandoff
from tokenvault.quorum.messages import (
    Accept,
    AeSummaryReply,
    Envelope,
    EpochQuery,
    Mapping,
    Message,
    Prepare,
    Promise,
)
from tokenvault.quorum.peer_core import PeerCore
from tokenvault.quorum.replica import Replica
from tokenvault.sim.cli import main
from tokenvault.sim.client import SIM_SECRET
from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import SimResult, run_simulation
from tokenvault.sim.shrink import SHRINK_RUNS_MAX, shrink
from tokenvault.tokens import derive_data_key

SWEEP_SEEDS = 200
# Invariants a client could see without looking inside the peers.
BLACK_BOX = {
    "acknowledged-write-visible",
    "reads-never-go-back",
    "convergence",
    "epochs-never-go-back",
    "same-input-same-token",
    "rotations-agree",
}


def _never_wait_for_durability(self: PeerCore, effects: Effects, *, from_storage: bool) -> bool:
    return False


class WriteQuorumOfOne(Coordinator):
    def _write_quorum_reached(self, operation: Any) -> bool:
        return all(len(holders) >= 1 for holders in operation.holders.values())


class WriteQuorumOfOneUnasserted(WriteQuorumOfOne):
    def _require_write_quorum(self, operation: Any) -> None:
        pass  # the coordinator's own assertion is off: only the checker is left to catch it


class NoBlockingReadRepair(Coordinator):
    def _write_quorum_reached(self, operation: Any) -> bool:
        if operation.phase is _Phase.REPAIRING:
            return True  # answer the read with what R replicas said, repair nothing first
        return bool(super()._write_quorum_reached(operation))


class _PromisesForgotten:
    """A storage view in which every acceptor record has promised nothing."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage

    def get(self, key: bytes) -> bytes | None:
        raw: bytes | None = self._storage.get(key)
        if raw is None or not key.startswith(b"a\x00"):
            return raw
        record = json.loads(raw)
        record["promised"] = [0, ""]
        return json.dumps(record).encode()


class ForgetfulAcceptor(Acceptor):
    def _on_prepare(self, source: str, prepare: Prepare) -> Effects:
        stored = self._storage
        self._storage = _PromisesForgotten(stored)
        try:
            return super()._on_prepare(source, prepare)
        finally:
            self._storage = stored


class ProposerSkipsAdoption(EpochCoordinator):
    def _on_promise(
        self, operation: Any, source: str, promise: Promise, now: float, effects: Effects
    ) -> None:
        blind = msgspec.structs.replace(promise, accepted_ballot=None, accepted_value=None)
        super()._on_promise(operation, source, blind, now, effects)


class HintsDeletedEarly(HintedHandoff):
    def tick(self, now: float, down: frozenset[str]) -> Effects:
        effects = super().tick(now, down)
        for state in self._targets.values():
            for key in list(state.in_flight.values()):
                if key in state.hints:
                    self._forget(state, key, effects)  # before any acknowledgement
        return effects


class AntiEntropySkipsABucket(AntiEntropy):
    def _on_summary_reply(
        self, current: Any, reply: AeSummaryReply, now: float, effects: Effects
    ) -> None:
        skipped = msgspec.structs.replace(reply, differing=reply.differing[1:])
        super()._on_summary_reply(current, skipped, now, effects)


def _votes_while_recovering(
    peer_id: str, store_id: str, source: str, message: Message
) -> list[Envelope] | None:
    if isinstance(message, Prepare | Accept | EpochQuery):
        return None  # answered as if it had never lost its store
    return recovery.refusal(peer_id, store_id, source, message)


def _open_without_the_tag(owner: str, token: str, raw: bytes) -> Mapping | None:
    """What a reader that skips the tag makes of a format-2 record (None: no such record)."""
    field_end = 6 + raw[5]
    nonce, ciphertext = raw[field_end : field_end + 12], raw[field_end + 12 : -16]
    counter = nonce + (2).to_bytes(4, "big")  # GCM's first counter block for the data
    key = derive_data_key(SIM_SECRET, owner)
    plaintext = Cipher(algorithms.AES(key), modes.CTR(counter)).decryptor().update(ciphertext)
    try:
        field = raw[6:field_end].decode()
        return Mapping(
            owner=owner,
            token=token,
            value=plaintext.decode(errors="replace"),
            field=field,
            epoch=int.from_bytes(raw[1:5]),
        )
    except ValueError:
        return None


class SkipsReadVerification(Replica):
    def verified(self, owner: str, token: str, raw: bytes) -> Mapping | Any:
        if raw[:1] == b"\x02" and len(raw) >= 6 + raw[5] + 28:
            opened = _open_without_the_tag(owner, token, raw)
            if opened is not None:
                return opened
        return super().verified(owner, token, raw)


@dataclass(frozen=True)
class Mutation:
    name: str
    apply: Callable[[pytest.MonkeyPatch], None]
    expected: frozenset[str]  # the first failing seed shows at least one of these
    black_box: bool  # a client-visible invariant also catches it within the sweep
    caught_in_core: bool = False  # a core's own assertion catches it first (no-core-exception)
    sweep_seeds: int = SWEEP_SEEDS  # seeds 1..this are swept for a failure


MUTATIONS = (
    Mutation(
        "early-ack",
        lambda mp: mp.setattr(PeerCore, "_needs_durability", _never_wait_for_durability),
        frozenset({"answers-are-durable", "acknowledged-write-visible", "convergence"}),
        black_box=False,
    ),
    Mutation(
        "write-quorum-one",
        lambda mp: mp.setattr(peer_core_module, "Coordinator", WriteQuorumOfOne),
        frozenset({"no-core-exception"}),
        black_box=False,  # the assertion refuses the success: no client sees the bug
        caught_in_core=True,
    ),
    Mutation(
        "write-quorum-one-unasserted",
        lambda mp: mp.setattr(peer_core_module, "Coordinator", WriteQuorumOfOneUnasserted),
        frozenset({"answers-are-durable", "acknowledged-write-visible"}),
        black_box=True,
    ),
    Mutation(
        "no-blocking-read-repair",
        lambda mp: mp.setattr(peer_core_module, "Coordinator", NoBlockingReadRepair),
        frozenset({"no-core-exception"}),
        black_box=False,
        caught_in_core=True,
    ),
    Mutation(
        "forgetful-acceptor",
        lambda mp: mp.setattr(peer_core_module, "Acceptor", ForgetfulAcceptor),
        frozenset({"promise-never-decreases"}),
        black_box=True,
    ),
    Mutation(
        "proposer-skips-adoption",
        lambda mp: mp.setattr(peer_core_module, "EpochCoordinator", ProposerSkipsAdoption),
        frozenset({"chosen-value-kept", "one-value-per-slot"}),
        black_box=True,
    ),
    Mutation(
        "hints-deleted-early",
        lambda mp: mp.setattr(peer_core_module, "HintedHandoff", HintsDeletedEarly),
        frozenset({"hints-kept-until-acknowledged"}),
        black_box=False,
    ),
    Mutation(
        "recovering-peer-votes",
        lambda mp: mp.setattr(peer_core_module, "refusal", _votes_while_recovering),
        frozenset({"chosen-value-kept", "one-value-per-slot"}),
        black_box=False,
        # Rare in a random run (a wipe must meet dueling rotates across a partition): the
        # first seed that catches it moves whenever the message mix changes (572 once reads
        # asked R replicas, not N), ~7 min of sweeping. test_disk_wipe.py catches it on every
        # seed; this sweep runs in the long sweep only.
        sweep_seeds=1_000,
    ),
    Mutation(
        "skips-read-verification",
        lambda mp: mp.setattr(peer_core_module, "Replica", SkipsReadVerification),
        frozenset({"no-corrupt-value", "convergence", "one-value-per-token"}),
        black_box=True,
    ),
    Mutation(
        "anti-entropy-skips-a-bucket",
        lambda mp: mp.setattr(peer_core_module, "AntiEntropy", AntiEntropySkipsABucket),
        frozenset({"convergence"}),
        black_box=True,
    ),
)


def _first_failure(
    predicate: Callable[[SimResult], bool], sweep_seeds: int = SWEEP_SEEDS
) -> SimResult | None:
    for seed in range(1, sweep_seeds + 1):
        result = run_simulation(SimConfig(seed=seed))
        if predicate(result):
            return result
    return None


def _report_of(output: str, seed: int) -> tuple[str, list[str]]:
    """The digest and the violation lines a run printed."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"seed {seed} digest "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break  # the next seed's line, or the sweep's summary
        block.append(line)
    violations = [line.strip() for line in block if line.strip().startswith("VIOLATION ")]
    return block[0].split()[3], violations


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_the_sweep_catches_a_broken_rule_and_the_replay_reproduces_it(
    mutation: Mutation, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if mutation.sweep_seeds > max(SWEEP_SEEDS, sweep_seed_count()):
        pytest.skip(
            f"sweeps {mutation.sweep_seeds} seeds: set TOKENVAULT_SIM_SEEDS={mutation.sweep_seeds}"
            " (tests/sim/test_disk_wipe.py catches this mutation on every seed meanwhile)"
        )
    mutation.apply(monkeypatch)
    failed = _first_failure(lambda r: not r.passed, mutation.sweep_seeds)
    assert failed is not None, f"{mutation.name}: no seed of 1..{mutation.sweep_seeds} failed"
    assert {v.invariant for v in failed.violations} & mutation.expected
    if mutation.caught_in_core:  # contained: the peer logged it and went on
        assert any("InvariantViolation" in v.summary for v in failed.violations)

    # A CLI sweep that ends on that seed fails, prints the report and a replay command.
    seed = failed.seed
    assert main(["--seed", str(max(seed - 1, 1)), "--seeds", "2"]) == 1
    output = capsys.readouterr().out
    digest, violations = _report_of(output, seed)
    assert digest == failed.digest
    assert violations == [f"VIOLATION {v.invariant}: {v.summary}" for v in failed.violations]
    replay = f"tokenvault sim --seed {seed} --peers 5 --owners 3 --ops 200"
    assert f"  replay: {replay}" in output.splitlines()
    assert f"  failed seed {seed}: {replay}" in output.splitlines()
    assert "    operations:" in output and "    events:" in output

    # The replay command gives the same digest and the same violations.
    assert main(replay.split()[2:]) == 1
    replayed = capsys.readouterr().out
    assert _report_of(replayed, seed) == (digest, violations)


@pytest.mark.parametrize("mutation", [m for m in MUTATIONS if m.black_box], ids=lambda m: m.name)
def test_a_client_visible_invariant_catches_it_too(
    mutation: Mutation, monkeypatch: pytest.MonkeyPatch
) -> None:
    mutation.apply(monkeypatch)
    failed = _first_failure(lambda r: any(v.invariant in BLACK_BOX for v in r.violations))
    assert failed is not None, f"{mutation.name}: no client-visible violation in the sweep"


def test_the_unmutated_cores_pass_the_seeds_that_catch_the_mutations(
    sweep: list[SimResult],
) -> None:
    assert all(result.passed for result in sweep[:10])


def test_shrinking_keeps_the_failure_and_its_replay_reproduces_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    MUTATIONS[1].apply(monkeypatch)  # write-quorum-one
    failed = _first_failure(lambda r: not r.passed)
    assert failed is not None
    shrunk = shrink(failed)
    smallest = shrunk.smallest
    assert smallest.config.operation_count < failed.config.operation_count
    assert smallest.config.owner_count <= failed.config.owner_count
    assert {v.invariant for v in smallest.violations} & {v.invariant for v in failed.violations}
    assert shrunk.runs <= SHRINK_RUNS_MAX
    assert main(smallest.replay_command().split()[2:]) == 1
    digest, _ = _report_of(capsys.readouterr().out, smallest.seed)
    assert digest == smallest.digest
    assert main(["--seed", str(failed.seed), "--shrink"]) == 1
    assert f"shrunk in {shrunk.runs} runs to: {smallest.replay_command()}" in (
        capsys.readouterr().out
    )
