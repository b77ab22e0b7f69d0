"""The discrete-event engine: a virtual clock, an event queue and the run's digest.

Rules:
- Time is virtual. `now_s` moves only when the next event is taken from the queue; nothing in
  the simulator reads a wall clock.
- Events run in (time, sequence) order. The sequence is the order in which they were scheduled,
  so two events due at the same instant always run in the same order.
- Every random choice comes from `rng_for(seed, name)`: one generator per component, seeded from
  SHA-256 of "seed/name". Adding a draw in one component never shifts another's draws.
- Every event that runs writes canonical lines (`record`) into a running SHA-256 digest and into
  the run's log. A line is built from ids, counts and virtual times only, never from Python ids
  or `hash()`, so the same seed gives the same digest, byte for byte, in any process.
- Every run is bounded: `run` stops at a virtual time and after a number of events, or as soon
  as an event calls `stop()` (the runner's phase probes do, once a phase's goal is reached).
- `watch(predicate, action)` runs action (as a new event, once) right after the first log line
  that matches: scenario tests use it to strike at an exact moment ("crash p4 when p2's promise
  reaches it"). The random runs use no watch.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Action = Callable[[], None]


def rng_for(seed: int, name: str) -> random.Random:
    """The generator of one component: the same (seed, name) always gives the same draws."""
    material = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return random.Random(int.from_bytes(material, "big"))


@dataclass(frozen=True, slots=True)
class LogLine:
    index: int
    at_s: float
    text: str

    def render(self) -> str:
        return f"#{self.index} {self.at_s:.6f} {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStop:
    """Why `Engine.run` returned: the queue drained, or a bound was reached first."""

    drained: bool
    events_run: int
    stopped: bool = False  # an event called stop()


class Engine:
    """The virtual clock, the queue of pending actions and the digest of what ran."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._now_s = 0.0
        self._queue: list[tuple[float, int, Action]] = []
        self._sequence = 0
        self._digest = hashlib.sha256()
        self._log: list[LogLine] = []
        self._log_times: list[float] = []
        self._watches: list[tuple[Callable[[str], bool], Action]] = []
        self._stopped = False
        self.events_run = 0

    @property
    def now_s(self) -> float:
        return self._now_s

    def rng(self, name: str) -> random.Random:
        return rng_for(self.seed, name)

    # -- scheduling ----------------------------------------------------------------------------

    def at(self, time_s: float, action: Action) -> None:
        """Run action at virtual time time_s (never in the past)."""
        assert time_s >= self._now_s, "an event cannot be scheduled in the past"
        self._sequence += 1
        heapq.heappush(self._queue, (time_s, self._sequence, action))

    def after(self, delay_s: float, action: Action) -> None:
        assert delay_s >= 0.0, "delays are never negative"
        self.at(self._now_s + delay_s, action)

    def pending(self) -> int:
        return len(self._queue)

    def stop(self) -> None:
        """End the current `run` after the event that calls this."""
        self._stopped = True

    def run(self, *, until_s: float, events_max: int) -> RunStop:
        """Run events due at or before until_s, at most events_max of them, until stop()."""
        queue = self._queue
        run = 0
        self._stopped = False
        while queue and run < events_max and not self._stopped:
            if queue[0][0] > until_s:
                break
            time_s, _, action = heapq.heappop(queue)
            self._now_s = time_s
            run += 1
            action()
        self.events_run += run
        stopped, self._stopped = self._stopped, False
        return RunStop(drained=not queue, events_run=run, stopped=stopped)

    def watch(self, predicate: Callable[[str], bool], action: Action) -> None:
        """Run action once, as a new event, right after the first line that matches."""
        self._watches.append((predicate, action))

    # -- digest and log ------------------------------------------------------------------------

    def record(self, text: str) -> None:
        """One canonical line: it enters the digest and the log."""
        line = LogLine(len(self._log), self._now_s, text)
        self._log.append(line)
        self._log_times.append(self._now_s)
        self._digest.update(f"{self._now_s:.6f} {text}\n".encode())
        if self._watches:
            for watch in list(self._watches):
                if watch[0](text):
                    self._watches.remove(watch)
                    self.after(0.0, watch[1])

    def digest(self) -> str:
        return self._digest.hexdigest()

    def log(self) -> Sequence[LogLine]:
        return self._log

    def lines_mentioning(
        self, needles: Iterable[str], *, window_s: tuple[float, float], lines_max: int
    ) -> tuple[LogLine, ...]:
        """Log lines within a window of virtual time that contain any needle (ids in lines are
        followed by a space or end them)."""
        wanted = tuple(needles)
        found: list[LogLine] = []
        if not wanted:
            return ()
        for line in self._window(window_s):
            text = line.text + " "
            if any(needle in text for needle in wanted):
                found.append(line)
                if len(found) >= lines_max:
                    break
        return tuple(found)

    def _window(self, window_s: tuple[float, float]) -> Sequence[LogLine]:
        start = bisect.bisect_left(self._log_times, window_s[0])
        end = bisect.bisect_right(self._log_times, window_s[1])
        return self._log[start:end]

    def lines_starting(
        self, words: Iterable[str], *, window_s: tuple[float, float], lines_max: int
    ) -> tuple[LogLine, ...]:
        """Log lines within a window of virtual time whose text starts with one of words."""
        prefixes = tuple(words)
        found = [line for line in self._window(window_s) if line.text.startswith(prefixes)]
        return tuple(found[:lines_max])
