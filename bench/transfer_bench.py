"""CPU per moved mapping of a transfer (quorum/transfer.py), sources and target together.

Usage: python bench/transfer_bench.py [--mappings 20000] [--value-bytes 32]

Three old replicas (MemoryStore) hold `--mappings` sealed mappings of one owner; a new replica
runs one transfer to its commit: the epochs step, a copying pass and a verifying pass (N = 3,
W = 2: two whole passes), every message passed by hand and every page encoded and decoded by
the peer codec as on the wire. The throttle is set out of the way. Reports the process CPU
time per mapping moved, split into what the sources spent answering pages and what the target
spent checking and storing them, and the wire bytes per mapping. A measurement, not a test:
LevelDB's writes and fsyncs and the sockets are not in it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokenvault.http.peer_codec import decode_batch, encode_batch, encode_message
from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.effects import Effects
from tokenvault.quorum.messages import (
    GENESIS,
    InsertRequest,
    Mapping,
    Message,
    RecoveryQuery,
    RecoveryReport,
    TransferPage,
)
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.replica import Replica
from tokenvault.quorum.sealing import Sealer
from tokenvault.quorum.transfer import TransferLimits, Transfers
from tokenvault.store.memory_store import MemoryStore

OWNER = "bench-owner"
OLD = ("s1", "s2", "s3")
SECRET = b"transfer-bench-secret-32-bytes!!"


class Peer:
    def __init__(self, peer_id: str, sealer: Sealer) -> None:
        self.store = MemoryStore()
        self.replica = Replica(peer_id=peer_id, storage=self.store, sealer=sealer)
        self.acceptor = Acceptor(peer_id=peer_id, storage=self.store, store_id=peer_id)
        self.transfers = Transfers(
            peer_id=peer_id,
            storage=self.store,
            replica=self.replica,
            acceptor=self.acceptor,
            quorum=QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2),
            store_id=peer_id,
            holds=lambda owner: True,
            now=0.0,
            limits=TransferLimits(rate_bytes_s=1e15, burst_bytes=2**40),
        )
        self.cpu_s = 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mappings", type=int, default=20_000)
    parser.add_argument("--value-bytes", type=int, default=32)
    args = parser.parse_args()
    sealer = Sealer(SECRET)
    maker = sealer.token_maker(OWNER, GENESIS)
    mappings = []
    for i in range(args.mappings):
        value = f"{i:0{args.value_bytes}d}"
        token = maker.token("ssn", value)
        mappings.append(Mapping(owner=OWNER, token=token, value=value, field="ssn", epoch=1))
    peers = {peer_id: Peer(peer_id, sealer) for peer_id in (*OLD, "t")}
    for peer_id in OLD:
        peer = peers[peer_id]
        for start in range(0, len(mappings), 1000):
            chunk = tuple(mappings[start : start + 1000])
            request = InsertRequest(op_id="w", owner=OWNER, mappings=chunk)
            peer.store.stage(peer.replica.on_message("client", request).writes)
        peer.store.sync()
    queue: deque[tuple[str, str, bytes]] = deque()
    wire_bytes = 0

    def apply(peer_id: str, effects: Effects) -> None:
        nonlocal wire_bytes
        peer = peers[peer_id]
        started = time.process_time()
        if effects.writes:
            peer.store.stage(effects.writes)
            peer.store.sync()
        for envelope in effects.messages:
            body = encode_batch(envelope.source, [encode_message(envelope.message)])
            wire_bytes += len(body)
            queue.append((envelope.source, envelope.destination, body))
        peer.cpu_s += time.process_time() - started

    apply("t", peers["t"].transfers.start(2, OWNER, OLD, 0.0))
    while queue:
        source, destination, body = queue.popleft()
        peer = peers[destination]
        started = time.process_time()
        _, (message,) = decode_batch(body)
        effects = deliver(peer, source, message)
        peer.cpu_s += time.process_time() - started
        apply(destination, effects)
    (view,) = peers["t"].transfers.views(0.0)
    assert view.state == "committed", view
    held = peers["t"].store.scan(b"m\x00", limit=args.mappings + 1)
    assert len(held) == args.mappings
    moved = view.mappings_moved
    sources_s = sum(peers[p].cpu_s for p in OLD)
    target_s = peers["t"].cpu_s
    print(f"mappings moved      {moved} (two whole passes read: {2 * args.mappings})")
    print(f"CPU per moved mapping, sources  {sources_s / moved * 1e6:8.1f} us")
    print(f"CPU per moved mapping, target   {target_s / moved * 1e6:8.1f} us")
    print(f"CPU per moved mapping, total    {(sources_s + target_s) / moved * 1e6:8.1f} us")
    print(f"wire bytes per moved mapping    {wire_bytes / moved:8.1f}")
    return 0


def deliver(peer: Peer, source: str, message: Message) -> Effects:
    if isinstance(message, RecoveryQuery):
        return peer.acceptor.on_message(source, message)
    if isinstance(message, RecoveryReport):
        return peer.transfers.on_recovery_report(source, message, 0.0)
    assert isinstance(message, TransferPage) or message.op_id.startswith("tr:")
    return peer.transfers.on_message(source, message, 0.0)


if __name__ == "__main__":
    sys.exit(main())
