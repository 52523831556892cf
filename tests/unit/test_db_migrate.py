"""Several replicas of one service starting at once on the same SQLite file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

MIGRATE = """
import asyncio, sys, time
from mosaic.db import Database
import federation_gateway.app as app

async def main():
    db = Database(sys.argv[1], schema="gateway", migrations_dir=app.MIGRATIONS)
    # Every process has imported everything; now start together.
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
    await db.migrate()
    current, head = await db.revisions()
    await db.dispose()
    assert current == head, (current, head)

asyncio.run(main())
"""


def test_concurrent_migrations_on_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    start_at = str(time.time() + 4.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    results = [(p.wait(60), p.stderr.read().decode() if p.stderr else "") for p in procs]
    for code, err in results:
        assert code == 0, err[-2000:]
