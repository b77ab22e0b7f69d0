"""A token bucket in bytes per second: the throttle of one peer's transfers (transfer.py).

Rules: pure (time comes in as `now`). The bucket fills at `rate_bytes_s` up to `burst_bytes`.
A page's size is known only once it arrived, so a page is asked for while the level is not
negative and charged when it comes: the level may go below zero by what pages in flight carry
(bounded by the caller's pages in flight times a page's bytes), and asking waits until it is
back at zero. Over any long span the bytes charged stay within rate * span + burst + what was
in flight.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_burst", "_level", "_rate", "_updated")

    def __init__(self, *, rate_bytes_s: float, burst_bytes: int, now: float) -> None:
        assert rate_bytes_s > 0 and burst_bytes > 0
        self._rate = rate_bytes_s
        self._burst = float(burst_bytes)
        self._level = float(burst_bytes)
        self._updated = now

    @property
    def rate_bytes_s(self) -> float:
        return self._rate

    def level(self, now: float) -> float:
        """Bytes that may be asked for now (negative: owed)."""
        if now > self._updated:
            self._level = min(self._burst, self._level + (now - self._updated) * self._rate)
            self._updated = now
        return self._level

    def ready_at(self, now: float) -> float:
        """When the level is back at zero: `now` when it is already."""
        level = self.level(now)
        return now if level >= 0 else now + -level / self._rate

    def charge(self, size_bytes: int, now: float) -> None:
        assert size_bytes >= 0
        self._level = self.level(now) - size_bytes
