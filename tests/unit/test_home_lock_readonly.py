"""The home lock on a home that is on a read-only file system (a Postgres instance whose
home needs no writing once made): a lock file made earlier is still locked, so a second
`up` is still refused; without one the error says the file system is read-only, instead
of advising a change of user."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from mosaic.cli import home_lock
from mosaic.cli.home_lock import LOCK_FILE, HomeBusy, lock_home
from mosaic.config import ConfigError


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def open_(path: Any, flags: int, *args: Any) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(home_lock.os, "open", open_)


def test_an_existing_lock_file_on_a_read_only_home_still_locks(
    tmp_path: Path, read_only: None
) -> None:
    (tmp_path / LOCK_FILE).write_text("")

    held = lock_home(tmp_path, "up", "b")
    try:
        with pytest.raises(HomeBusy):
            lock_home(tmp_path, "up", "b")
    finally:
        held.release()
    lock_home(tmp_path, "up", "b").release()


def test_no_lock_file_on_a_read_only_home_is_named_as_such(tmp_path: Path, read_only: None) -> None:
    with pytest.raises(ConfigError) as refused:
        lock_home(tmp_path, "up", "b")

    assert "read-only file system" in refused.value.message
    assert "user" not in (refused.value.remediation or "")
