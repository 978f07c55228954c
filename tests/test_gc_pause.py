"""gc_paused: the collector is off inside, back on after the last pause ends, errors included."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from stream.gc_pause import gc_paused


def test_pauses_nest_and_restore_the_collector() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()


def test_an_error_inside_still_restores_it() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_pauses_from_threads_resume_after_the_last() -> None:
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=other)
    with gc_paused():
        t.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other thread's pause outlives ours
    release.set()
    t.join(5)
    assert gc.isenabled()


def test_cycles_made_during_a_pause_are_collected_after_it() -> None:
    class Node:
        other: object

    with gc_paused():
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        assert ref() is not None  # a cycle: refcounting alone cannot free it
    gc.collect()
    assert ref() is None
