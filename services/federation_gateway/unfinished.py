"""Work that outlives the call that started it, and its grace at shutdown.

Once a peer gateway or an internal service has acted on a request of ours (a redeemed
enrollment token, a certificate renewed by the peer, a certificate to revoke after a
renewal), the rest of that flow runs to its end in a task of its own even if the caller
goes away. At shutdown such tasks get a bounded grace, while the channels they need are
still open, before they are cancelled: a flow cut half-way would be left to the recovery
paths (a claim that lapses, an enrollment to redo).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("federation_gateway.unfinished")

T = TypeVar("T")


class UnfinishedWork:
    """The gateway's tasks that must not be dropped with their caller; kept referenced."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` in a task of its own, kept until it is done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def finish(self, grace_s: float) -> None:
        """At shutdown: wait up to ``grace_s`` for every task, those started meanwhile
        included; then cancel what is left and wait for it to unwind."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        if self._tasks:
            log.info("finishing work in progress", extra={"tasks": len(self._tasks)})
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        if not self._tasks:
            return
        left_over = set(self._tasks)
        log.warning("work in progress cancelled at shutdown", extra={"tasks": len(left_over)})
        for task in left_over:
            task.cancel()
        await asyncio.gather(*left_over, return_exceptions=True)
