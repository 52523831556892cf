"""grants-service's WatchChanges fan-out: a subscriber that stops reading is cut off (its
stream ends, and a watcher that reconnects drops what it cached) instead of having its
queue grow for as long as grants change."""

from __future__ import annotations

import uuid

import pytest

from grants_service import servicer
from grants_service.servicer import ChangeNotifier


async def test_a_stalled_subscriber_is_cut_off_and_the_others_keep_their_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(servicer, "MAX_PENDING_CHANGES", 3)
    notifier = ChangeNotifier()
    stalled, reading = notifier.subscribe(), notifier.subscribe()
    await stalled.__anext__()  # subscribed (the first, empty message)
    await reading.__anext__()
    grant_ids = [uuid.uuid4() for _ in range(4)]
    for grant_id in grant_ids[:3]:
        notifier.publish(grant_ids=[grant_id])
    got = [(await reading.__anext__()).grant_ids[0] for _ in range(3)]
    assert got == [str(g) for g in grant_ids[:3]]

    notifier.publish(grant_ids=[grant_ids[3]])  # the stalled one's queue is full
    with pytest.raises(StopAsyncIteration):
        await stalled.__anext__()
    assert (await reading.__anext__()).grant_ids == [str(grant_ids[3])]
    notifier.close()
    with pytest.raises(StopAsyncIteration):
        await reading.__anext__()
