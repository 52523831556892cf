"""enrollment-service tables: enrollment tokens, stored as a hash only."""

from __future__ import annotations

from sqlalchemy import Column, Enum, Index, Integer, MetaData, String, Table, Uuid

from mosaic.sqltypes import UtcDateTime

metadata = MetaData()

TOKEN_STATES = ("unused", "redeeming", "used")

federation_enrollment_tokens = Table(
    "federation_enrollment_tokens",
    metadata,
    Column("id", Uuid, primary_key=True),
    # HMAC-SHA256 of the token under a key derived from the seal secret; never the token.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("token_hint", String(8), nullable=False),
    Column("grant_id", Uuid, nullable=False),
    Column("peer_id", Uuid, nullable=False),
    Column("state", Enum(*TOKEN_STATES, name="token_state", native_enum=False), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("claimed_until", UtcDateTime, nullable=True),
    Column("used_at", UtcDateTime, nullable=True),
    Column("used_by_serial", String(64), nullable=True),
    Column("failed_attempts", Integer, nullable=False, default=0),
    Index("ix_federation_enrollment_tokens_grant_id", "grant_id"),
)
