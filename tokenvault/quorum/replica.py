"""The replica core: insert-once storage of an owner's mappings, sans-IO.

Rules:
- An insert answers, per mapping, STORED (new), IDENTICAL (already held, equal: a retry) or
  CONFLICT (a different mapping under the same token). A conflict is an integrity alarm: it is
  reported and counted and the held mapping is never overwritten.
- The replica reads through a `StorageReader` that already shows every write it staged earlier
  (the driver stages each Effects' writes before the next input), so two inserts of one token
  can never both be STORED.
- Its replies leave only after the driver made all staged writes durable: a STORED or IDENTICAL
  answer means "fsync'd here".
"""

from __future__ import annotations

from typing import Protocol

from tokenvault.quorum.effects import Effects, Event
from tokenvault.quorum.messages import (
    Envelope,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    ReadReply,
    ReadRequest,
)
from tokenvault.quorum.records import decode_mapping, encode_mapping, mapping_key


class StorageReader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...


class Replica:
    def __init__(self, *, peer_id: str, storage: StorageReader) -> None:
        self._peer_id = peer_id
        self._storage = storage

    def read_mapping(self, owner: str, token: str) -> Mapping | None:
        raw = self._storage.get(mapping_key(owner, token))
        return None if raw is None else decode_mapping(owner, token, raw)

    def on_message(self, source: str, message: Message) -> Effects:
        if isinstance(message, InsertRequest):
            return self._on_insert(source, message)
        if isinstance(message, ReadRequest):
            return self._on_read(source, message)
        raise AssertionError(f"replica got a message it does not serve: {type(message).__name__}")

    def _on_insert(self, source: str, request: InsertRequest) -> Effects:
        effects = Effects()
        outcomes: list[InsertOutcome] = []
        stored = identical = 0
        for mapping in request.mappings:
            held = self.read_mapping(mapping.owner, mapping.token)
            if held is None:
                effects.writes.append(
                    (mapping_key(mapping.owner, mapping.token), encode_mapping(mapping))
                )
                outcomes.append(InsertOutcome.STORED)
                stored += 1
            elif held == mapping:
                outcomes.append(InsertOutcome.IDENTICAL)
                identical += 1
            else:
                outcomes.append(InsertOutcome.CONFLICT)
                effects.events.append(
                    Event(
                        name="mapping_conflict",
                        owner=request.owner,
                        request_id=request.op_id,
                        details=(("token_prefix", mapping.token[:8]), ("source", source)),
                    )
                )
        if stored:
            effects.events.append(
                Event(
                    name="mapping_stored",
                    owner=request.owner,
                    request_id=request.op_id,
                    details=(("count", stored),),
                )
            )
        if identical:
            effects.events.append(
                Event(
                    name="mapping_identical",
                    owner=request.owner,
                    request_id=request.op_id,
                    details=(("count", identical),),
                )
            )
        reply = InsertReply(
            op_id=request.op_id,
            owner=request.owner,
            tokens=tuple(m.token for m in request.mappings),
            outcomes=tuple(outcomes),
        )
        effects.messages.append(Envelope(source=self._peer_id, destination=source, message=reply))
        return effects

    def _on_read(self, source: str, request: ReadRequest) -> Effects:
        mappings = tuple(self.read_mapping(request.owner, token) for token in request.tokens)
        reply = ReadReply(
            op_id=request.op_id, owner=request.owner, tokens=request.tokens, mappings=mappings
        )
        return Effects(messages=[Envelope(source=self._peer_id, destination=source, message=reply)])
