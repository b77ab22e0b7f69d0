"""An in-memory filter of the keys a store holds: a read of a key it never held skips LevelDB.

Rules:
- No false negatives for the keys it covers: every key the store holds up to the store's cursor
  was added (the first scrub after open adds the durable keys, page by page; every key staged
  with a value is added at once), so `might_contain(key) is False` proves such a key absent.
  A deleted key stays in the filter; a positive answer is only "maybe" and the caller reads
  the store.
- A scalable Bloom filter: layers of `BITS_PER_KEY` bits per key of capacity and three probes
  by double hashing; when the newest layer is full a layer twice its capacity is added, so the
  false-positive rate stays within a few percent however many keys arrive, without a rescan.
- Probes come from Python's `hash()`, salted per process: the filter lives only in this process
  and is filled again after every open, and a peer cannot craft keys that collide in it.
- Measured (bench/tokenize_bench.py): inserting a new mapping checks absence here in about
  0.5 us instead of a LevelDB read of 2-3 us, on each of the N replicas: about a tenth of the
  CPU per tokenized mapping.
- Measured at 5 million keys (bench/scale_bench.py, thread CPU): three layers, 15 MB; an absent
  key costs 1.5-2.6 us here and 1.5-2.2 us in LevelDB's own bloom filter (10 bits per key): even
  at that size, while at 1 million keys and below (one layer, 2 MB) it costs 0.56 us. Kept for
  what it saves on stores up to a few million keys; a filter sized once for the store (one
  layer) is the way to keep it ahead past that.
"""

from __future__ import annotations

from collections.abc import Iterable

BITS_PER_KEY = 10
INITIAL_CAPACITY = 1 << 20
_HASH_MASK = (1 << 64) - 1


class _Layer:
    __slots__ = ("bits", "capacity", "count", "mask")

    def __init__(self, capacity: int) -> None:
        size = 1 << max(10, (capacity * BITS_PER_KEY - 1).bit_length())  # a power of two
        self.bits = bytearray(size // 8)
        self.mask = size - 1
        self.capacity = capacity
        self.count = 0


class KeyFilter:
    def __init__(self, capacity: int = INITIAL_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._layers = [_Layer(capacity)]

    def add(self, key: bytes) -> None:
        self.add_many((key,))

    def add_many(self, keys: Iterable[bytes]) -> None:
        layer = self._layers[-1]
        bits, mask = layer.bits, layer.mask
        for key in keys:
            if layer.count >= layer.capacity:
                layer = _Layer(2 * layer.capacity)
                self._layers.append(layer)
                bits, mask = layer.bits, layer.mask
            layer.count += 1
            h = hash(key) & _HASH_MASK
            step = (h >> 32) | 1
            index = h & mask  # three probes, unrolled: this runs for every staged write
            bits[index >> 3] |= 1 << (index & 7)
            index = (h + step) & mask
            bits[index >> 3] |= 1 << (index & 7)
            index = (h + 2 * step) & mask
            bits[index >> 3] |= 1 << (index & 7)

    def might_contain(self, key: bytes) -> bool:
        h0 = hash(key) & _HASH_MASK
        step = (h0 >> 32) | 1
        for layer in self._layers:
            bits, mask = layer.bits, layer.mask
            index = h0 & mask
            if not bits[index >> 3] & (1 << (index & 7)):
                continue
            index = (h0 + step) & mask
            if not bits[index >> 3] & (1 << (index & 7)):
                continue
            index = (h0 + 2 * step) & mask
            if bits[index >> 3] & (1 << (index & 7)):
                return True
        return False

    @property
    def layers(self) -> int:
        return len(self._layers)

    @property
    def keys_added(self) -> int:
        return sum(layer.count for layer in self._layers)

    @property
    def bytes_used(self) -> int:
        return sum(len(layer.bits) for layer in self._layers)
