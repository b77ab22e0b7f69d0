"""How a transfer's progress is laid out in a Storage (transfer.py).

Rules:
- Its own prefix, `t\\0` (records.py `TRANSFER_PREFIX`): one record per (ring version, owner),
  key `t\\0<version, 8 bytes big-endian>\\0<owner>`, so a peer's transfers sort by version and
  `forget_before` deletes a prefix of them. Owner ids never contain NUL.
- The value is a small JSON record (msgspec): the step, the cursor of the pass under way, the
  old replicas a whole pass was read from, and the counters shown to the operator. It is
  written in the same write batch as the mappings of the page it follows (persist together:
  after a crash the cursor never runs ahead of what is durable, nor far behind it).
- Decoding anything else is StorageCorrupt (records.py's operating error), never a crash.
"""

from __future__ import annotations

import msgspec

from tokenvault.quorum.records import TRANSFER_PREFIX, StorageCorrupt, StorageView

STEPS = ("epochs", "copying", "verifying", "committed")


class TransferRecord(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    owner: str
    old: tuple[str, ...]  # the owner's old set: the sources
    step: str = "epochs"
    source: str = ""  # the source of the pass under way ("" before the first page)
    cursor: str | None = None  # the last token of the pass under way stored here
    whole: bool = True  # the pass under way was read from `source` alone so far
    verified: tuple[str, ...] = ()  # old replicas a whole pass was read from
    mappings_moved: int = 0  # mappings stored here by the transfer
    bytes_moved: int = 0  # record bytes received in verified pages
    conflicts: int = 0

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError("unknown transfer step")


def transfer_key(version: int, owner: str) -> bytes:
    return TRANSFER_PREFIX + version.to_bytes(8, "big") + b"\x00" + owner.encode()


def encode_transfer(record: TransferRecord) -> bytes:
    return msgspec.json.encode(record)


def read_transfers(storage: StorageView, limit: int) -> list[TransferRecord]:
    """Every transfer record (at most `limit`), by version then owner."""
    records = []
    for key, raw in storage.scan(TRANSFER_PREFIX, limit=limit):
        try:
            record = msgspec.json.decode(raw, type=TransferRecord)
        except (msgspec.DecodeError, ValueError) as error:
            raise StorageCorrupt("a transfer record does not decode") from error
        if transfer_key(record.version, record.owner) != key:
            raise StorageCorrupt("a transfer record is not under its own key")
        records.append(record)
    return records
