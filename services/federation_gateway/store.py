"""federation-gateway tables: the append-only audit log."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, MetaData, String, Table, Text, Uuid

from mosaic.sqltypes import UtcDateTime

metadata = MetaData()

federation_audit_log = Table(
    "federation_audit_log",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("peer_id", Uuid, nullable=True),
    Column("grant_id", Uuid, nullable=True),
    Column("subject_user_id", Uuid, nullable=True),
    Column("verb", String(32), nullable=False),
    Column("resource", String(16), nullable=True),
    Column("status", String(32), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("query_hash", String(64), nullable=True),
    Column("bytes_out", BigInteger, nullable=False, default=0),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("source_address", String(128), nullable=True),
    Column("detail", Text, nullable=True),
    # Ids are UUIDv7 (mosaic.ids): the primary key orders rows by creation, so it serves
    # "newest first" and --since; this index serves the same per peer. Every index is
    # written on every request's commit, so there is no other (gateway_0002).
    Index("ix_audit_peer_id", "peer_id", "id"),
)
