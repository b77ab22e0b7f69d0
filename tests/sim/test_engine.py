"""The engine: seeded generators, the (time, sequence) order, bounds, and the digest."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from tokenvault.sim.engine import Engine, rng_for


def test_a_generator_depends_on_the_seed_and_the_name_only() -> None:
    draws = [rng_for(7, "link/p1->p2").random() for _ in range(3)]
    assert len(set(draws)) == 1
    assert rng_for(7, "link/p1->p2").random() != rng_for(8, "link/p1->p2").random()
    assert rng_for(7, "link/p1->p2").random() != rng_for(7, "link/p2->p1").random()


def test_drawing_from_one_component_never_shifts_another() -> None:
    engine = Engine(3)
    untouched = engine.rng("b").random()
    busy = engine.rng("a")
    for _ in range(100):
        busy.random()
    assert engine.rng("b").random() == untouched


def test_events_run_in_time_then_scheduling_order() -> None:
    engine = Engine(1)
    ran: list[str] = []
    engine.at(2.0, lambda: ran.append("late"))
    engine.at(1.0, lambda: ran.append("first at 1"))
    engine.at(1.0, lambda: ran.append("second at 1"))
    engine.after(0.5, lambda: ran.append("early"))
    stop = engine.run(until_s=10.0, events_max=100)
    assert ran == ["early", "first at 1", "second at 1", "late"]
    assert stop.drained and stop.events_run == 4
    assert engine.now_s == 2.0


def test_an_event_scheduled_now_runs_after_the_current_one() -> None:
    engine = Engine(1)
    ran: list[str] = []

    def first() -> None:
        engine.after(0.0, lambda: ran.append("scheduled by first"))
        ran.append("first")

    engine.at(1.0, first)
    engine.at(1.0, lambda: ran.append("second"))
    engine.run(until_s=5.0, events_max=10)
    assert ran == ["first", "second", "scheduled by first"]


def test_run_stops_at_its_bounds() -> None:
    engine = Engine(1)
    for index in range(10):
        engine.at(float(index), lambda: None)
    stop = engine.run(until_s=4.5, events_max=100)
    assert (stop.drained, stop.events_run, engine.now_s) == (False, 5, 4.0)
    stop = engine.run(until_s=100.0, events_max=2)
    assert (stop.drained, stop.events_run, engine.pending()) == (False, 2, 3)
    assert engine.events_run == 7


def test_the_past_cannot_be_scheduled() -> None:
    engine = Engine(1)
    engine.at(5.0, lambda: engine.at(4.0, lambda: None))
    with pytest.raises(AssertionError):
        engine.run(until_s=10.0, events_max=10)


def _digest_of(lines: list[tuple[float, str]]) -> str:
    engine = Engine(1)
    for at_s, text in lines:
        engine.at(at_s, functools.partial(engine.record, text))
    engine.run(until_s=100.0, events_max=100)
    return engine.digest()


def test_the_digest_covers_every_line_its_order_and_its_time() -> None:
    base = _digest_of([(1.0, "a"), (2.0, "b")])
    assert base == _digest_of([(1.0, "a"), (2.0, "b")])
    assert base != _digest_of([(1.0, "a"), (2.0, "c")])
    assert base != _digest_of([(1.0, "b"), (2.0, "a")])
    assert base != _digest_of([(1.0, "a"), (2.5, "b")])
    assert base != _digest_of([(1.0, "a")])


def test_the_log_finds_lines_by_needle_and_by_first_word_in_a_window() -> None:
    engine = Engine(1)
    texts = ["invoke op=c1-1 x", "crash p2", "deliver op=c1-10 y", "crash p3", "op=c1-1"]
    for index, text in enumerate(texts):
        engine.at(float(index), functools.partial(engine.record, text))
    engine.run(until_s=10.0, events_max=10)
    found = engine.lines_mentioning(["op=c1-1 "], window_s=(0.0, 10.0), lines_max=10)
    assert [line.text for line in found] == ["invoke op=c1-1 x", "op=c1-1"]
    crashes = engine.lines_starting(["crash"], window_s=(2.0, 3.0), lines_max=10)
    assert [line.render() for line in crashes] == ["#3 3.000000 crash p3"]


def test_stop_ends_the_run_after_the_current_event() -> None:
    engine = Engine(1)
    ran: list[float] = []
    for index in range(5):
        engine.at(float(index), lambda: ran.append(engine.now_s))
    engine.at(2.0, engine.stop)
    stop = engine.run(until_s=10.0, events_max=100)
    assert stop.stopped and not stop.drained
    assert ran == [0.0, 1.0, 2.0]
    again = engine.run(until_s=10.0, events_max=100)  # stop() held for one run only
    assert again.drained and not again.stopped and ran == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_watch_runs_once_right_after_the_first_matching_line() -> None:
    engine = Engine(1)
    ran: list[str] = []
    engine.watch(lambda text: "crash" in text, lambda: ran.append(f"struck {engine.now_s}"))

    def record_and_note(line: str, note: str) -> Callable[[], None]:
        def step() -> None:
            engine.record(line)
            ran.append(note)

        return step

    engine.at(1.0, record_and_note("deliver a", "deliver"))
    engine.at(2.0, record_and_note("crash p2", "crash"))
    engine.at(2.0, lambda: ran.append("same instant, scheduled earlier"))
    engine.at(3.0, lambda: engine.record("crash p3"))
    engine.run(until_s=10.0, events_max=100)
    assert ran == ["deliver", "crash", "same instant, scheduled earlier", "struck 2.0"]
