"""Microseconds per peer batch to encode and decode, for the batches the hot path carries.

Usage: python bench/peer_codec_bench.py [--compare-with OLD_PEER_CODEC.py] [--rounds 7]

Times, for a batch of one message each: an insert of 100 mappings, a read reply of 100 held
mappings, and a read reply of one. Encoding is `encode_message` then `encode_batch` (what a peer
link does); decoding is `decode_batch` (what the receiving peer does). Each figure is the best of
`--rounds` rounds (the least disturbed by the rest of the machine). With `--compare-with`, the
same batches go through a second codec module loaded from a file, for instance the previous
version: `git show HEAD~1:tokenvault/http/peer_codec.py > /tmp/old_peer_codec.py`, and the
table shows old, new and new/old. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from tokenvault.http import peer_codec
from tokenvault.quorum.messages import InsertRequest, Mapping, Message, ReadReply

OWNER = "alice"
MAPPINGS_PER_BATCH = 100


def sample_mappings(count: int) -> tuple[Mapping, ...]:
    """Mappings shaped like real ones: 47-character tokens, card-number values, epoch 3."""
    return tuple(
        Mapping(
            owner=OWNER,
            token=f"tok_{index:043d}",
            value=f"4111 1111 1111 {index:04d}",
            field="card_number",
            epoch=3,
        )
        for index in range(count)
    )


def sample_batches() -> dict[str, Message]:
    mappings = sample_mappings(MAPPINGS_PER_BATCH)
    tokens = tuple(m.token for m in mappings)
    return {
        f"insert of {MAPPINGS_PER_BATCH} mappings": InsertRequest(
            op_id="n1-8c98411c-6", owner=OWNER, mappings=mappings
        ),
        f"read reply of {MAPPINGS_PER_BATCH} mappings": ReadReply(
            op_id="n1-8c98411c-7", owner=OWNER, tokens=tokens, mappings=mappings
        ),
        "read reply of 1 mapping": ReadReply(
            op_id="n1-8c98411c-8", owner=OWNER, tokens=tokens[:1], mappings=mappings[:1]
        ),
    }


def best_us(action: Callable[[], object], rounds: int) -> float:
    """The best of `rounds` rounds, each long enough (about 0.2 s) to be measured well."""
    timer = timeit.Timer(action)
    loops, _ = timer.autorange()
    return min(timer.repeat(repeat=rounds, number=loops)) / loops * 1e6


def measure(codec: ModuleType, message: Message, rounds: int) -> tuple[float, float, int]:
    """(encode µs, decode µs, bytes) of a batch holding `message`; checks that it round-trips."""
    body = codec.encode_batch("n1", [codec.encode_message(message)])
    assert codec.decode_batch(body) == ("n1", [message]), "the codec does not round-trip"

    def encode() -> bytes:
        return bytes(codec.encode_batch("n1", [codec.encode_message(message)]))

    return best_us(encode, rounds), best_us(lambda: codec.decode_batch(body), rounds), len(body)


def load_codec(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_peer_codec", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(codecs: Sequence[tuple[str, ModuleType]], rounds: int) -> None:
    compare = len(codecs) == 2
    header = f"{'batch':<28} {'':<10}" + "".join(f"{name:>10}" for name, _ in codecs)
    print(header + (f"{'new/old':>10}" if compare else ""))
    for label, message in sample_batches().items():
        results = [measure(codec, message, rounds) for _, codec in codecs]
        rows = (("encode µs", "{:.1f}"), ("decode µs", "{:.1f}"), ("bytes", "{:d}"))
        for column, (what, form) in enumerate(rows):
            figures = [result[column] for result in results]
            line = f"{label if column == 0 else '':<28} {what:<10}"
            line += "".join(f"{form.format(figure):>10}" for figure in figures)
            if compare:
                line += f"{figures[1] / figures[0]:>10.2f}"
            print(line)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-with", type=Path, help="an older peer_codec.py to time too")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    codecs: list[tuple[str, ModuleType]] = [("new", peer_codec)]
    if args.compare_with is not None:
        codecs.insert(0, ("old", load_codec(args.compare_with)))
    report(codecs, args.rounds)


if __name__ == "__main__":
    main()
