"""grants-service tables: grants and the peer registry (the only place that touches them)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Enum,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
)

from mosaic.sqltypes import UtcDateTime

metadata = MetaData()

GRANT_STATUSES = ("pending", "active", "revoked", "expired")
PEER_STATES = ("pending", "active", "suspended", "revoked")
PEER_DIRECTIONS = ("inbound", "outbound")

federation_peers = Table(
    "federation_peers",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("display_name", String(256), nullable=False),
    Column(
        "direction",
        Enum(*PEER_DIRECTIONS, name="peer_direction", native_enum=False),
        nullable=False,
    ),
    Column("state", Enum(*PEER_STATES, name="peer_state", native_enum=False), nullable=False),
    Column("state_reason", Text, nullable=True),
    Column("endpoint", String(512), nullable=True),
    Column("cert_pem", Text, nullable=True),
    Column("cert_serial", String(64), nullable=True),
    Column("cert_not_after", UtcDateTime, nullable=True),
    Column("ca_bundle_pem", Text, nullable=True),
    # AES-GCM blob (mosaic.sealing), bound to federation_peers/sealed_client_key/<id>.
    Column("sealed_client_key", LargeBinary, nullable=True),
    Column("remote_grant_id", Uuid, nullable=True),
    Column("remote_subject_user_id", Uuid, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

federation_grants = Table(
    "federation_grants",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("peer_id", Uuid, ForeignKey("federation_peers.id", ondelete="CASCADE"), nullable=False),
    Column("subject_user_id", Uuid, nullable=False),
    Column("scope", JSON, nullable=False),
    Column(
        "status", Enum(*GRANT_STATUSES, name="grant_status", native_enum=False), nullable=False
    ),
    Column("sensitive", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("activated_at", UtcDateTime, nullable=True),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("revoke_reason", Text, nullable=True),
    Column("enrollment_token_id", Uuid, nullable=True),
    Index("ix_federation_grants_peer_id", "peer_id"),
    Index("ix_federation_grants_status", "status"),
)
