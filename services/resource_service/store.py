"""resource-service tables: the reference data source's rows."""

from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, String, Table, Text, Uuid

from mosaic.sqltypes import UtcDateTime

metadata = MetaData()

RESOURCE_KINDS = ("tasks", "notes", "memory", "credentials", "api_keys")

resources = Table(
    "resources",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("resource", String(16), nullable=False),
    Column("owner_user_id", Uuid, nullable=False),
    Column("team_id", Uuid, nullable=True),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_resources_owner_kind_id", "owner_user_id", "resource", "id"),
)
