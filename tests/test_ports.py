"""tokenvault/ports.py: free loopback ports outside the kernel's ephemeral range."""

from __future__ import annotations

import socket

from tokenvault import ports


def ephemeral() -> range:
    low, high = ports._ephemeral_range()
    return range(low, high + 1)


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_block_is_free_consecutive_and_outside_the_ephemeral_range() -> None:
    for _ in range(20):
        base = ports.free_port_block(3)
        block = range(base + 1, base + 4)
        assert all(bindable(port) for port in block)
        assert not any(port in ephemeral() for port in block)
        assert block[-1] < 65536


def test_free_ports_are_distinct_free_and_outside_the_ephemeral_range() -> None:
    chosen = ports.free_ports(6)
    assert len(set(chosen)) == 6
    assert all(bindable(port) and port not in ephemeral() for port in chosen)


def test_a_taken_port_is_never_part_of_a_block() -> None:
    holders = []
    try:
        for _ in range(200):  # hold many candidates; no block may include one of them
            holder = socket.socket()
            holder.bind(("127.0.0.1", ports.free_ports(1)[0]))
            holders.append(holder)
        held = {holder.getsockname()[1] for holder in holders}
        for _ in range(50):
            base = ports.free_port_block(3)
            assert not held & set(range(base + 1, base + 4))
    finally:
        for holder in holders:
            holder.close()
