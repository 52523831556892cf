"""Explicit keepalive and message-size options, set together on both sides.

The server must accept pings at least as often as clients send them, or clients
get GOAWAY ``too_many_pings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

MAX_RECEIVE_BYTES = 4 * 1024 * 1024
MAX_SEND_BYTES = 4 * 1024 * 1024
# What one message of many rows (a List or Search reply, an import batch) may hold, with
# room under the caps above for the rest of the message and what a gateway adds to it.
ROWS_BUDGET_BYTES = 3 * 1024 * 1024


def encoded_size(item: Any) -> int:
    """A repeated message field's share of its message: the item, its tag and length
    prefix (counted generously)."""
    return int(item.ByteSize()) + 8


def in_batches(items: Sequence[T], *, max_items: int | None = None) -> list[list[T]]:
    """Consecutive runs of ``items`` that each fit one message: at most ROWS_BUDGET_BYTES
    by encoded_size, and at most ``max_items`` when given. None for no items."""
    batches: list[list[T]] = []
    batch: list[T] = []
    size = 0
    for item in items:
        item_size = encoded_size(item)
        full = max_items is not None and len(batch) == max_items
        if batch and (full or size + item_size > ROWS_BUDGET_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        batches.append(batch)
    return batches


CLIENT_KEEPALIVE_MS = 30_000
MAX_RECONNECT_BACKOFF_MS = 4000

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", CLIENT_KEEPALIVE_MS // 2),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_connection_idle_ms", 15 * 60_000),
    # gRPC sets SO_REUSEPORT by default on Linux, which lets a second server (a second
    # copy of a service, or an older version left running) listen on the same port and
    # take a share of its calls. One listener per port.
    ("grpc.so_reuseport", 0),
]

CLIENT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
    # After the other side has been unreachable, gRPC waits longer and longer between
    # reconnection attempts (by default up to 120 s) and fails calls at once meanwhile: a
    # service (or A, for a peer) would go on failing for minutes after it came back.
    # Every channel tries again within 5 s: gRPC adds up to 20 % of jitter to the maximum,
    # so 4 s here means at most 4.8 s between attempts. (The minimum is left alone: gRPC
    # also uses it as the connect timeout of each attempt.)
    ("grpc.initial_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
]

# Deadline applied to an outbound call that did not set one.
DEFAULT_DEADLINE_S = 10.0
