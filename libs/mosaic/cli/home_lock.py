"""One process at a time sets up or runs an instance home: an exclusive ``flock`` on
``<home>/mosaic.lock``.

`mosaic init` holds it while it writes the home; `mosaic up` for as long as it runs, and
the services it starts inherit it, so the home stays locked until the last of them exits.
The kernel drops the lock when the last process holding it exits, however it exits: a lock
file left behind by a dead process blocks nothing. The file's text says who holds the
lock, only to name the holder when someone else is refused.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mosaic.config import ConfigError

LOCK_FILE = "mosaic.lock"
# `init --renew-*` runs beside a running instance, so it cannot take LOCK_FILE; two
# renewals at once could each write the other's key under its own certificate.
RENEW_LOCK_FILE = "renew.lock"
_HOLDER_MAX = 4096


@dataclass(frozen=True)
class LockHolder:
    """Who holds a home's lock, as it wrote itself into the lock file."""

    command: str  # "init" or "up"
    pid: int
    name: str  # the instance's name
    since: str  # ISO 8601, UTC


class HomeBusy(Exception):
    """Another process holds the home's lock; ``holder`` is None when it has not said who
    it is (yet)."""

    def __init__(self, home: Path, holder: LockHolder | None) -> None:
        super().__init__(f"{home} is locked by another mosaic process")
        self.home = home
        self.holder = holder


class HomeLock:
    """A held lock: released by :meth:`release` or when this process and every child given
    :attr:`fd` (``subprocess.Popen(pass_fds=...)``) have exited."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor of the file releases the flock
            self.fd = -1


def lock_home(home: Path, command: str, name: str, *, lock_file: str = LOCK_FILE) -> HomeLock:
    """Take ``home``'s lock (``lock_file``) without waiting, for ``command`` on instance
    ``name``.

    Raises HomeBusy when another process holds it, ConfigError when the lock file cannot
    be opened or locked (a home owned by another user, a file system without locks).
    The home directory must exist.
    """
    path = home / lock_file
    writable = True
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise ConfigError(
                f"cannot open {path}: {exc.strerror or type(exc).__name__}",
                remediation="run mosaic as the user that owns the instance home",
            ) from None
        # A home on a read-only file system (a Postgres instance whose files need no
        # writing): a lock file made earlier can still be locked, though not labelled.
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            raise ConfigError(
                f"cannot create {path}: the instance home is on a read-only file system",
                remediation="make the home writable once (`mosaic init` creates the lock "
                "file) or mount it read-write"
                if lock_file == LOCK_FILE
                # A renewal writes certificates into the home: read-only, it cannot run.
                else "mount the home read-write to renew (the renewal writes into it)",
            ) from None
        writable = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise HomeBusy(home, holder) from None
    except OSError as exc:
        os.close(fd)
        raise ConfigError(
            f"cannot lock {path}: {exc.strerror or type(exc).__name__}",
            remediation="keep the instance home on a local file system",
        ) from None
    me = {
        "command": command,
        "pid": os.getpid(),
        "name": name,
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if writable:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
    return HomeLock(fd)


def running_holder(home: Path) -> LockHolder | None:
    """Who holds ``home``'s lock right now, as the lock file names it; None when nobody
    does, the holder has not said who it is, or the file cannot be read.

    The lock is only probed (a shared lock taken and dropped at once) when the named
    process still exists, so a `mosaic up` starting at that moment is not refused because
    of an old holder's text.
    """
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        holder = _read_holder(fd)
        if holder is None or not process_exists(holder.pid):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def process_exists(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: it exists
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _read_holder(fd: int) -> LockHolder | None:
    """The holder as written in the lock file; None when it is unreadable or not written
    yet (the holder writes it just after locking)."""
    try:
        doc = json.loads(os.pread(fd, _HOLDER_MAX, 0))
        return LockHolder(
            command=str(doc["command"]),
            pid=int(doc["pid"]),
            name=str(doc["name"]),
            since=str(doc["since"]),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
