"""`mosaic up`'s restart policy, without processes: the delay grows with the exits within
the window, the fifth exit within it gives up, and a quiet window starts over."""

from __future__ import annotations

from mosaic.cli.supervise import (
    CRASH_WINDOW_S,
    MAX_EXITS_IN_WINDOW,
    ExitHistory,
    describe_exit,
    exit_text,
)


def test_delays_grow_then_up_gives_up_on_the_fifth_exit_within_the_window() -> None:
    history = ExitHistory()
    now = 1000.0
    delays = []
    for _ in range(MAX_EXITS_IN_WINDOW):
        delays.append(history.next_delay(now))
        now += 3.0

    assert delays == [1.0, 2.0, 4.0, 8.0, None]
    assert history.restarts == 4


def test_exits_further_apart_than_the_window_restart_forever_after_a_second() -> None:
    history = ExitHistory()
    now = 1000.0
    for _ in range(20):
        assert history.next_delay(now) == 1.0
        now += CRASH_WINDOW_S + 0.1
    assert history.restarts == 20


def test_only_exits_within_the_window_count() -> None:
    history = ExitHistory()
    for at in (0.0, 1.0, 2.0, 3.0):
        history.next_delay(at)
    # The first two have left the window: this is the third exit in it, not the fifth.
    assert history.next_delay(1.5 + CRASH_WINDOW_S) == 4.0


def test_an_end_is_named_by_its_exit_status_or_its_signal() -> None:
    assert describe_exit(1) == {"exit_status": 1, "signal": None}
    assert describe_exit(-9) == {"exit_status": None, "signal": "SIGKILL"}
    assert exit_text(-9) == "signal SIGKILL"
    assert exit_text(3) == "exit status 3"


def test_failed_starts_after_a_crash_count_however_long_they_take() -> None:
    """A slow machine: each failed start takes longer than the window. Counted by the
    window alone, the exits would never be five within it and `up` would restart for ever."""
    history = ExitHistory()
    assert history.next_delay(0.0) == 1.0  # a crash of a service that ran
    now = 0.0
    delays = []
    for _ in range(MAX_EXITS_IN_WINDOW - 1):
        now += CRASH_WINDOW_S + 5.0
        delays.append(history.next_delay(now, started=False))
    assert delays == [2.0, 4.0, 8.0, None]


def test_a_service_that_runs_again_after_failed_starts_is_judged_by_the_window_again() -> None:
    history = ExitHistory()
    history.next_delay(0.0)
    history.next_delay(70.0, started=False)
    history.next_delay(140.0, started=False)
    # Then it started and ran for a while: the exits before it are past the window.
    assert history.next_delay(300.0) == 1.0
