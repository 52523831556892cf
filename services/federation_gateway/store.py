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
)

# DESIGN.md: descending created_at indexes, global, per peer and per grant (gateway_0001).
_created_desc = federation_audit_log.c.created_at.desc()
Index("ix_audit_created_at", _created_desc)
Index("ix_audit_peer_created_at", federation_audit_log.c.peer_id, _created_desc)
Index("ix_audit_grant_created_at", federation_audit_log.c.grant_id, _created_desc)
