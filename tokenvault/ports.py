"""Free loopback ports for the processes a bench or a test starts (peers, etcd members).

Rules:
- Ports are picked outside the kernel's ephemeral range (ip_local_port_range): a port picked
  from it can be taken, between the pick and the peer's bind, as the source port of any
  outgoing connection on the machine (a test's own polling included), and the peer then fails
  with "address already in use". Below the range first, above it when that is too small.
- A port is free when a socket can bind it on 127.0.0.1 now; a block's ports are all held
  while the block is checked. Nothing stays bound when a function returns.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")
EPHEMERAL_RANGE_DEFAULT = (32768, 60999)  # Linux's default
LOWEST_PORT = 10_000  # below: ports services commonly use
ATTEMPTS_MAX = 500


class NoFreePorts(Exception):
    """No free ports were found outside the ephemeral range."""


def free_port_block(count: int) -> int:
    """A base port such that base+1 .. base+count are free on 127.0.0.1 (what `init` takes)."""
    low, high = _pick_range()
    rng = random.Random()
    for _ in range(ATTEMPTS_MAX):
        base = rng.randrange(low - 1, high - count)
        if _all_free(range(base + 1, base + count + 1)):
            return base
    raise NoFreePorts(f"found no {count} consecutive free ports on 127.0.0.1")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now."""
    low, high = _pick_range()
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(ATTEMPTS_MAX):
        if len(chosen) == count:
            return chosen
        port = rng.randrange(low, high)
        if port not in chosen and _all_free(range(port, port + 1)):
            chosen.append(port)
    if len(chosen) == count:
        return chosen
    raise NoFreePorts(f"found no {count} free ports on 127.0.0.1")


def _pick_range() -> tuple[int, int]:
    """[low, high): the ports outside the ephemeral range to pick from."""
    ephemeral_low, ephemeral_high = _ephemeral_range()
    if ephemeral_low - LOWEST_PORT >= 1_000:
        return LOWEST_PORT, ephemeral_low
    return ephemeral_high + 1, 65536


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(field) for field in EPHEMERAL_RANGE_PATH.read_text().split())
        return low, high
    except (OSError, ValueError):
        return EPHEMERAL_RANGE_DEFAULT


def _all_free(ports: range) -> bool:
    held: list[socket.socket] = []
    try:
        for port in ports:
            probe = socket.socket()
            held.append(probe)
            probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for probe in held:
            probe.close()
