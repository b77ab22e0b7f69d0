"""The membership mutants: production classes under tokenvault/quorum/ with one rule of the joint
phase broken on purpose (docs/membership.md §6), for tests/sim/test_membership_mutations.py.

Rules: each mutant subclasses (or replaces a function of) a module under tokenvault/quorum/,
never the simulator, and reaches into private methods on purpose: the rule it breaks is what
they hold. The rule is broken only while an owner moves (a joint placement), so a run without
membership changes is the run of the unmutated cores.
"""

from __future__ import annotations

from typing import Any

from tokenvault.quorum.coordinator import Coordinator
from tokenvault.quorum.epoch_coordinator import EpochCoordinator
from tokenvault.quorum.invariants import require
from tokenvault.quorum.placement import OwnerPlacement, quorum_in_each
from tokenvault.quorum.quorum_config import QuorumConfig


def _one_set(placement: OwnerPlacement, *, new: bool) -> tuple[str, ...]:
    return placement.new if new else placement.old


class _CountsOneSet(Coordinator):
    """While the owner moves, a write (or a repair) counts W of ONE set only."""

    counts_new = True  # the set counted: the new one, or the old one
    finish_only = False  # break the rule only once the finish is learned (reads on the new set)

    def _held_in_each(self, operation: Any, holders: set[str]) -> bool:
        placement: OwnerPlacement = operation.placement
        if placement.joint and (placement.reads_new or not self.finish_only):
            counted = frozenset(_one_set(placement, new=self.counts_new))
            return len(holders & counted) >= self._quorum.write_quorum
        return bool(super()._held_in_each(operation, holders))


class SkipDualWriteNew(_CountsOneSet):
    """skip-dual-write: W of the new set only (the coordinator's assertion refuses it)."""


class SkipDualWriteNewUnasserted(SkipDualWriteNew):
    def _require_write_quorum(self, operation: Any) -> None:
        pass  # the coordinator's own assertion is off: only the checker is left to catch it


class SkipDualWriteOld(_CountsOneSet):
    """skip-dual-write (old): W of the old set only."""

    counts_new = False


class SkipDualWriteOldUnasserted(SkipDualWriteOld):
    def _require_write_quorum(self, operation: Any) -> None:
        pass


class FinishEndsDualWrite(_CountsOneSet):
    """finish-ends-dual-write: once the finish is learned, writes count W of the new set only,
    before the change is drained (a coordinator still at the joint version reads the old set)."""

    finish_only = True


class FinishEndsDualWriteUnasserted(FinishEndsDualWrite):
    def _require_write_quorum(self, operation: Any) -> None:
        pass


class EpochRoundOneMajority(EpochCoordinator):
    """epoch-round-one-majority: a joint-phase epoch round (prepare and accept) is won with a
    majority of the new set only."""

    @staticmethod
    def _majority_of_each(operation: Any, answered: dict[str, Any]) -> bool:
        placement: OwnerPlacement = operation.placement
        if not placement.joint:
            return bool(EpochCoordinator._majority_of_each(operation, answered))
        return quorum_in_each(answered, (placement.new,))


def require_but_chosen_with_both_majorities(condition: bool, message: str) -> None:
    """epoch_coordinator's `require` with one assertion off: the one that refuses to report a
    value chosen without a majority of each set (for epoch-round-one-majority-unasserted)."""
    if not message.startswith("proposer would report a value chosen"):
        require(condition, message)


def commit_after_one_pass(quorum: QuorumConfig, old_count: int) -> int:
    """commit-before-digests-match: a transfer commits after its first whole pass, without the
    N - W + 1 verifying passes (transfer.passes_needed)."""
    return 1
