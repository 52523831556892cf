"""What a service tells `mosaic up` that started it: that it got as far as listening.

`up` passes each service the write end of a pipe, named by MOSAIC_UP_STARTED_FD (the
readiness notification of supervisors such as systemd's ``sd_notify``, reduced to one
byte). A service writes it once its listeners listen, whether or not its dependencies
answer yet. `up` tells by it a service that failed to start (its configuration, a file of
its home, a port taken: starting it again cannot help) from one that crashed while it ran.
A service started any other way finds no variable and writes nothing.
"""

from __future__ import annotations

import contextlib
import os

STARTED_FD_ENV = "MOSAIC_UP_STARTED_FD"


def report_started() -> None:
    """Tell `up` (when it started this process) that this service listens. Once: the
    variable is dropped, so nothing this process starts inherits it."""
    value = os.environ.pop(STARTED_FD_ENV, None)
    if value is None:
        return
    try:
        fd = int(value)
    except ValueError:
        return
    # OSError: `up` went away, and nobody is waiting for it.
    with contextlib.suppress(OSError):
        os.write(fd, b"started\n")
    with contextlib.suppress(OSError):
        os.close(fd)
