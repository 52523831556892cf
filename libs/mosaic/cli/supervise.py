"""`mosaic up`'s restart policy: a service that exits on its own is started again after a
growing delay, until it keeps exiting.

A service does not exit because a dependency is down (it answers NOT_SERVING and recovers
by itself, RUNBOOK.md "Reading the doctor"; a Postgres it cannot reach at start it waits
for), so an exit `up` did not ask for is a crash, a kill from outside, or a failure at
start-up (configuration, a file of the home, a port taken). The first two are worth a
restart; the last is not. A service reports when it listens (mosaic.supervisor): one that
exits before that at its first start makes `up` stop the instance at once; one that
crashed and then fails to start again is given up on after the restart delays, however
long its failed starts take.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from mosaic.supervisor import STARTED_FD_ENV

# The delay before restarting a service, by how many times it exited within the window
# (the first exit: 1 s). One exit more than there are delays within the window and `up`
# gives up: a service that crashed and then cannot start is given up on after about 20 s.
RESTART_DELAYS_S: Final = (1.0, 2.0, 4.0, 8.0)
CRASH_WINDOW_S: Final = 60.0
MAX_EXITS_IN_WINDOW: Final = len(RESTART_DELAYS_S) + 1


@dataclass
class ExitHistory:
    """The exits of one service that `up` did not ask for."""

    recent: deque[float] = field(default_factory=deque)  # monotonic times within the window
    restarts: int = 0  # since `up` started

    def next_delay(self, now: float, *, started: bool = True) -> float | None:
        """Record an exit at ``now``: the delay before the next start, or None when the
        service has exited MAX_EXITS_IN_WINDOW times within CRASH_WINDOW_S. An exit before
        the service ``started`` (listened) continues the exits before it, however long
        ago: a start that fails takes as long as the machine is slow, and must not make
        its failures look far enough apart to restart for ever."""
        if started:
            while self.recent and self.recent[0] <= now - CRASH_WINDOW_S:
                self.recent.popleft()
        self.recent.append(now)
        if len(self.recent) >= MAX_EXITS_IN_WINDOW:
            return None
        self.restarts += 1
        return RESTART_DELAYS_S[len(self.recent) - 1]


def describe_exit(returncode: int) -> dict[str, int | str | None]:
    """A child's end for a log line: its exit status, or the signal that ended it."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return {"exit_status": None, "signal": name}
    return {"exit_status": returncode, "signal": None}


def exit_text(returncode: int) -> str:
    """The same, in words: ``exit status 1`` or ``signal SIGKILL``."""
    end = describe_exit(returncode)
    if end["signal"] is not None:
        return f"signal {end['signal']}"
    return f"exit status {end['exit_status']}"


class StartReport:
    """The pipe one started service reports on (mosaic.supervisor): `up` keeps the read
    end, the service gets the write end. Read without blocking."""

    def __init__(self) -> None:
        self._read, self.write_fd = os.pipe()
        os.set_blocking(self._read, False)
        self._started = False
        self._open = True

    def env(self) -> dict[str, str]:
        return {STARTED_FD_ENV: str(self.write_fd)}

    def spawned(self) -> None:
        """The service has its copy of the write end (or failed to start): close ours, so
        that its exit reads as the end of the pipe."""
        os.close(self.write_fd)

    def started(self) -> bool:
        """Whether the service has reported that it listens (so far)."""
        if self._open:
            try:
                data = os.read(self._read, 64)
            except BlockingIOError:
                return False
            # A report, or the end of the pipe (the service exited without one): either
            # way nothing more will come.
            self._started = bool(data)
            self.close()
        return self._started

    def close(self) -> None:
        if self._open:
            self._open = False
            os.close(self._read)
