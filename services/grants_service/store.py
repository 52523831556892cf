"""grants-service tables: grants and the peer registry (the only place that touches them)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Enum,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    Uuid,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from grants_service import domain
from mosaic.db import Database
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
    Column("status", Enum(*GRANT_STATUSES, name="grant_status", native_enum=False), nullable=False),
    Column("sensitive", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("activated_at", UtcDateTime, nullable=True),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("revoke_reason", Text, nullable=True),
    Column("enrollment_token_id", Uuid, nullable=True),
    # The grant's own current certificate (grants_0002, grants_0003): a peer may hold
    # several grants, and the peer's row holds only its latest certificate.
    Column("cert_serial", String(64), nullable=True),
    Column("cert_pem", Text, nullable=True),
    Column("cert_not_after", UtcDateTime, nullable=True),
    Index("ix_federation_grants_peer_id", "peer_id"),
    Index("ix_federation_grants_status", "status"),
)


# ---- rows as the rest of the service sees them -----------------------------------------


@dataclass(frozen=True)
class GrantRow:
    id: uuid.UUID
    peer_id: uuid.UUID
    peer_name: str
    subject_user_id: uuid.UUID
    scope: dict[str, Any]
    status: str
    sensitive: bool
    created_at: dt.datetime
    activated_at: dt.datetime | None
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    revoke_reason: str | None
    enrollment_token_id: uuid.UUID | None
    cert_serial: str | None
    cert_pem: str | None
    cert_not_after: dt.datetime | None


@dataclass(frozen=True)
class PeerRow:
    """A peer without its sealed key (only GetPeerCredentials reads that)."""

    id: uuid.UUID
    name: str
    display_name: str
    direction: str
    state: str
    state_reason: str | None
    endpoint: str | None
    cert_pem: str | None
    cert_serial: str | None
    cert_not_after: dt.datetime | None
    ca_bundle_pem: str | None
    has_client_key: bool
    remote_grant_id: uuid.UUID | None
    remote_subject_user_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


_G = federation_grants
_P = federation_peers
_GRANT_COLUMNS = [*_G.c, _P.c.name.label("peer_name")]
_PEER_COLUMNS = [
    *(c for c in _P.c if c.name != "sealed_client_key"),
    _P.c.sealed_client_key.is_not(None).label("has_client_key"),
]
_GRANT_SELECT = select(*_GRANT_COLUMNS).select_from(_G.join(_P, _G.c.peer_id == _P.c.id))
_PEER_SELECT = select(*_PEER_COLUMNS)


def _grant(row: Row[Any]) -> GrantRow:
    m = row._mapping
    return GrantRow(**{f.name: m[f.name] for f in fields(GrantRow)})


def _peer(row: Row[Any]) -> PeerRow:
    m = row._mapping
    values = {f.name: m[f.name] for f in fields(PeerRow)}
    values["has_client_key"] = bool(values["has_client_key"])
    return PeerRow(**values)


class GrantsStore:
    """Every query of grants-service; transitions are conditional updates (one winner)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    # ---- grants --------------------------------------------------------------------

    async def create_grant(
        self, new: domain.NewGrant, *, now: dt.datetime
    ) -> tuple[GrantRow, PeerRow, bool]:
        """Insert a pending grant, and its pending inbound peer placeholder if the name is new.

        Returns (grant, peer, whether the peer was created). The placeholder is inserted
        first with ON CONFLICT DO NOTHING, so concurrent creators of one name agree on a
        single peer and, on SQLite, the transaction starts with a write (no snapshot upgrade).
        """
        new_peer_id = uuid.uuid4()
        grant_id = uuid.uuid4()
        insert = _dialect_insert(self._db)(_P).values(
            id=new_peer_id,
            name=new.peer_name,
            display_name=new.peer_name,
            direction="inbound",
            state="pending",
            created_at=now,
            updated_at=now,
        )
        async with self._engine.begin() as conn:
            await conn.execute(insert.on_conflict_do_nothing(index_elements=[_P.c.name]))
            peer_row = (
                await conn.execute(
                    # FOR SHARE (Postgres) holds off a concurrent revoke until we commit, so
                    # its cascade to grants sees ours.
                    _PEER_SELECT.where(_P.c.name == new.peer_name).with_for_update(read=True)
                )
            ).one()
            peer = _peer(peer_row)
            created = peer.id == new_peer_id
            if not created:
                domain.peer_for_new_grant(peer.direction, peer.state, peer.name)
            await conn.execute(
                _G.insert().values(
                    id=grant_id,
                    peer_id=peer.id,
                    subject_user_id=new.subject_user_id,
                    scope=new.scope.to_dict(),
                    status="pending",
                    sensitive=new.sensitive,
                    created_at=now,
                    expires_at=new.expires_at,
                )
            )
            grant = await self._grant_in(conn, grant_id)
        return grant, peer, created

    async def _lock_peer(self, conn: AsyncConnection, peer_id: uuid.UUID) -> None:
        """Postgres: lock the peer row before touching its grants.

        Every transaction that writes a peer and its grants takes the peer first (a peer's
        revocation revokes its grants, its removal deletes them): one taking a grant first
        and then waiting for the peer could deadlock with one of those. SQLite needs no
        lock; it runs one write transaction at a time.
        """
        if not self._db.is_sqlite:
            await conn.execute(
                select(_P.c.id).where(_P.c.id == peer_id).with_for_update(key_share=True)
            )

    @staticmethod
    async def _set_peer_certificate(
        conn: AsyncConnection,
        peer_id: uuid.UUID,
        *,
        states: Iterable[str],
        cert_serial: str,
        cert_pem: str,
        cert_not_after: dt.datetime | None,
        now: dt.datetime,
        **columns: Any,
    ) -> bool:
        """The inbound peer's latest certificate (and ``columns``), if it is in ``states``."""
        row = (
            await conn.execute(
                update(_P)
                .where(
                    _P.c.id == peer_id,
                    _P.c.direction == "inbound",
                    _P.c.state.in_(sorted(states)),
                )
                .values(
                    cert_serial=cert_serial,
                    cert_pem=cert_pem,
                    cert_not_after=cert_not_after,
                    updated_at=now,
                    **columns,
                )
                .returning(_P.c.id)
            )
        ).first()
        return row is not None

    async def get_grant(self, grant_id: uuid.UUID) -> GrantRow:
        async with self._engine.connect() as conn:
            return await self._grant_in(conn, grant_id)

    async def list_grants(
        self, *, peer_id: uuid.UUID | None = None, status: str | None = None
    ) -> list[GrantRow]:
        query = _GRANT_SELECT.order_by(_G.c.created_at.desc(), _G.c.id)
        if peer_id is not None:
            query = query.where(_G.c.peer_id == peer_id)
        if status is not None:
            query = query.where(_G.c.status == status)
        async with self._engine.connect() as conn:
            return [_grant(r) for r in (await conn.execute(query)).all()]

    async def expire_due(
        self, now: dt.datetime, grant_id: uuid.UUID | None = None
    ) -> list[uuid.UUID]:
        """Move every grant (or one) whose expiry has passed to expired; return their ids."""
        stmt = (
            update(_G)
            .where(
                _G.c.status.in_(sorted(domain.grant_sources("expire"))),
                _G.c.expires_at.is_not(None),
                _G.c.expires_at <= now,
            )
            .values(status="expired")
            .returning(_G.c.id)
        )
        if grant_id is not None:
            stmt = stmt.where(_G.c.id == grant_id)
        async with self._engine.begin() as conn:
            return list((await conn.execute(stmt)).scalars().all())

    async def revoke_grant(self, grant_id: uuid.UUID, *, reason: str, now: dt.datetime) -> GrantRow:
        """pending|active → revoked; exactly one of concurrent callers wins."""
        async with self._engine.begin() as conn:
            won = await conn.execute(
                update(_G)
                .where(_G.c.id == grant_id, _G.c.status.in_(sorted(domain.grant_sources("revoke"))))
                .values(status="revoked", revoked_at=now, revoke_reason=reason or None)
                .returning(_G.c.id)
            )
            if won.first() is None:
                current = await self._grant_in(conn, grant_id)
                raise domain.grant_refusal("revoke", current.status)
            return await self._grant_in(conn, grant_id)

    async def activate_grant_and_peer(
        self,
        *,
        grant_id: uuid.UUID,
        peer_id: uuid.UUID,
        cert_serial: str,
        cert_pem: str,
        cert_not_after: dt.datetime | None,
        token_id: uuid.UUID | None,
        now: dt.datetime,
    ) -> tuple[GrantRow, PeerRow]:
        """In one transaction: grant pending → active and peer pending|active → active.

        Both updates are conditional; if either matches nothing the transaction rolls back
        and the refusal names the state that stopped it.
        """
        async with self._engine.begin() as conn:
            await self._lock_peer(conn, peer_id)
            grant_won = await conn.execute(
                update(_G)
                .where(
                    _G.c.id == grant_id,
                    _G.c.peer_id == peer_id,
                    _G.c.status.in_(sorted(domain.grant_sources("activate"))),
                    or_(_G.c.expires_at.is_(None), _G.c.expires_at > now),
                )
                .values(
                    status="active",
                    activated_at=now,
                    enrollment_token_id=token_id,
                    cert_serial=cert_serial,
                    cert_pem=cert_pem,
                    cert_not_after=cert_not_after,
                )
                .returning(_G.c.id)
            )
            grant_activated = grant_won.first() is not None
            peer_won = grant_activated and await self._set_peer_certificate(
                conn,
                peer_id,
                states=domain.PEER_ACTIVATION_SOURCES,
                cert_serial=cert_serial,
                cert_pem=cert_pem,
                cert_not_after=cert_not_after,
                now=now,
                state="active",
                state_reason=None,
            )
            if not peer_won:
                grant = await self._grant_in(conn, grant_id)
                peer = await self._peer_in(conn, peer_id)
                raise domain.activation_refusal(
                    # Our own (rolled back) update made it active; it was pending before.
                    grant_status="pending" if grant_activated else grant.status,
                    grant_peer_id=str(grant.peer_id),
                    peer_id=str(peer_id),
                    peer_state=peer.state if peer.direction == "inbound" else "outbound",
                )
            return await self._grant_in(conn, grant_id), await self._peer_in(conn, peer_id)

    # ---- peers ---------------------------------------------------------------------

    async def get_peer(self, key: str) -> PeerRow:
        """A peer by id, or by its unique name."""
        async with self._engine.connect() as conn:
            try:
                return await self._peer_in(conn, uuid.UUID(key))
            except (ValueError, domain.PeerNotFound):
                pass
            # No peer has a name that breaks the rule: not found, on both engines, without
            # sending Postgres a NUL it would refuse (or SQLite a megabyte to compare).
            if domain.validate_peer_name(key) is not None:
                raise domain.PeerNotFound(key)
            row = (await conn.execute(_PEER_SELECT.where(_P.c.name == key))).first()
            if row is None:
                raise domain.PeerNotFound(key)
            return _peer(row)

    async def list_peers(
        self, *, direction: str | None = None, state: str | None = None
    ) -> list[PeerRow]:
        query = _PEER_SELECT.order_by(_P.c.name)
        if direction is not None:
            query = query.where(_P.c.direction == direction)
        if state is not None:
            query = query.where(_P.c.state == state)
        async with self._engine.connect() as conn:
            return [_peer(r) for r in (await conn.execute(query)).all()]

    async def set_peer_state(
        self, peer_id: uuid.UUID, *, target: str, reason: str, now: dt.datetime
    ) -> tuple[PeerRow, list[uuid.UUID]]:
        """Move a peer to ``target`` if allowed; revoking it revokes its live grants too.

        Returns the peer and the ids of the grants revoked with it.
        """
        async with self._engine.begin() as conn:
            won = await conn.execute(
                update(_P)
                .where(
                    _P.c.id == peer_id,
                    _P.c.state.in_(sorted(domain.peer_sources(target))),
                    # A pending outbound peer is a name reserved by a `peer add` in
                    # progress: that add makes it a peer or lets it go, nothing else.
                    or_(_P.c.direction == "inbound", _P.c.state != "pending"),
                )
                .values(state=target, state_reason=reason or None, updated_at=now)
                .returning(_P.c.id)
            )
            if won.first() is None:
                current = await self._peer_in(conn, peer_id)
                raise domain.peer_refusal(target, current.state)
            revoked: list[uuid.UUID] = []
            if target == "revoked":
                revoked = list(
                    (
                        await conn.execute(
                            update(_G)
                            .where(
                                _G.c.peer_id == peer_id,
                                _G.c.status.in_(sorted(domain.grant_sources("revoke"))),
                            )
                            .values(
                                status="revoked",
                                revoked_at=now,
                                revoke_reason=f"peer revoked: {reason}"
                                if reason
                                else "peer revoked",
                            )
                            .returning(_G.c.id)
                        )
                    )
                    .scalars()
                    .all()
                )
            return await self._peer_in(conn, peer_id), revoked

    async def remove_peer(
        self, peer_id: uuid.UUID, *, now: dt.datetime
    ) -> tuple[PeerRow, list[uuid.UUID]]:
        """Delete a peer; its grants go with it (ON DELETE CASCADE). Returns their ids."""
        async with self._engine.begin() as conn:
            # Write first: on Postgres this locks the row, on SQLite it takes the write lock
            # before we read, so the grant list matches what the cascade deletes.
            touched = await conn.execute(
                update(_P).where(_P.c.id == peer_id).values(updated_at=now).returning(_P.c.id)
            )
            if touched.first() is None:
                raise domain.PeerNotFound(str(peer_id))
            peer = await self._peer_in(conn, peer_id)
            grant_ids = list(
                (await conn.execute(select(_G.c.id).where(_G.c.peer_id == peer_id))).scalars().all()
            )
            await conn.execute(delete(_P).where(_P.c.id == peer_id))
        return peer, grant_ids

    async def reserve_outbound_peer(self, name: str, *, now: dt.datetime) -> PeerRow:
        """Reserve ``name`` for an enrollment: insert a pending outbound peer holding it.

        The unique name makes one of concurrent reservers (on any replica) the winner; the
        others get PeerNameTaken, with ``reserved_until`` while the name is only reserved.
        A reservation older than OUTBOUND_RESERVATION_TTL is taken over: deleted and made
        anew under a new id, so the enrollment that left it cannot register under it.
        """
        stale_before = now - domain.OUTBOUND_RESERVATION_TTL
        for _ in range(3):
            peer_id = uuid.uuid4()
            async with self._engine.begin() as conn:
                # A write first: on SQLite it takes the write lock before we read.
                await conn.execute(
                    delete(_P).where(
                        _P.c.name == name,
                        _P.c.direction == "outbound",
                        _P.c.state == "pending",
                        _P.c.updated_at <= stale_before,
                    )
                )
                await conn.execute(
                    _dialect_insert(self._db)(_P)
                    .values(
                        id=peer_id,
                        name=name,
                        display_name=name,
                        direction="outbound",
                        state="pending",
                        created_at=now,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=[_P.c.name])
                )
                row = (await conn.execute(_PEER_SELECT.where(_P.c.name == name))).first()
            if row is None:
                continue  # the holder of the name let it go between our insert and read
            peer = _peer(row)
            if peer.id == peer_id:
                return peer
            raise domain.PeerNameTaken(
                name,
                reserved_until=domain.reservation_end(peer.direction, peer.state, peer.updated_at),
            )
        raise domain.PeerNameTaken(name)

    async def release_outbound_peer(self, reservation_id: uuid.UUID) -> bool:
        """Delete a reservation (a pending outbound peer); a registered peer stays."""
        async with self._engine.begin() as conn:
            released = await conn.execute(
                delete(_P)
                .where(
                    _P.c.id == reservation_id,
                    _P.c.direction == "outbound",
                    _P.c.state == "pending",
                )
                .returning(_P.c.id)
            )
            return released.first() is not None

    async def register_outbound_peer(
        self,
        peer_id: uuid.UUID,
        new: domain.NewOutboundPeer,
        *,
        sealed_key: bytes,
        now: dt.datetime,
        reserved: bool = False,
    ) -> PeerRow:
        """An active outbound peer whose client key is already sealed for ``peer_id``.

        ``reserved``: ``peer_id`` is the reservation (reserve_outbound_peer) for ``new.name``,
        which becomes the peer if it is still pending (else PeerReservationLost). Otherwise
        the peer is inserted (PeerNameTaken if the name is in use).
        """
        values = dict(
            endpoint=new.endpoint,
            cert_pem=new.cert_pem,
            cert_serial=new.cert_serial,
            cert_not_after=new.cert_not_after,
            ca_bundle_pem=new.ca_bundle_pem,
            sealed_client_key=sealed_key,
            remote_grant_id=new.remote_grant_id,
            remote_subject_user_id=new.remote_subject_user_id,
            state="active",
            updated_at=now,
        )
        try:
            async with self._engine.begin() as conn:
                if reserved:
                    won = await conn.execute(
                        update(_P)
                        .where(
                            _P.c.id == peer_id,
                            _P.c.name == new.name,
                            _P.c.direction == "outbound",
                            _P.c.state == "pending",
                        )
                        .values(**values)
                        .returning(_P.c.id)
                    )
                    if won.first() is None:
                        raise domain.PeerReservationLost(new.name)
                else:
                    await conn.execute(
                        _P.insert().values(
                            id=peer_id,
                            name=new.name,
                            display_name=new.name,
                            direction="outbound",
                            created_at=now,
                            **values,
                        )
                    )
                return await self._peer_in(conn, peer_id)
        except IntegrityError:
            raise domain.PeerNameTaken(new.name) from None

    async def rotate_peer_certificate(
        self,
        peer_id: uuid.UUID,
        *,
        grant_id: uuid.UUID,
        expected_serial: str,
        new: domain.NewCertificate,
        now: dt.datetime,
    ) -> PeerRow:
        """An active grant's certificate becomes ``new`` only if its current serial is still
        ``expected_serial`` (of concurrent renewals exactly one wins), and the active
        inbound peer's latest certificate becomes ``new`` with it."""
        async with self._engine.begin() as conn:
            await self._lock_peer(conn, peer_id)
            grant_won = await conn.execute(
                update(_G)
                .where(
                    _G.c.id == grant_id,
                    _G.c.peer_id == peer_id,
                    _G.c.status == "active",
                    _G.c.cert_serial == expected_serial,
                )
                .values(
                    cert_serial=new.cert_serial,
                    cert_pem=new.cert_pem,
                    cert_not_after=new.cert_not_after,
                )
                .returning(_G.c.id)
            )
            peer_won = grant_won.first() is not None and await self._set_peer_certificate(
                conn,
                peer_id,
                states=("active",),
                cert_serial=new.cert_serial,
                cert_pem=new.cert_pem,
                cert_not_after=new.cert_not_after,
                now=now,
            )
            if not peer_won:  # rolled back: say what stopped it
                current = await self._peer_in(conn, peer_id)
                grant = await self._grant_in(conn, grant_id)
                raise domain.rotation_refusal(
                    direction=current.direction,
                    state=current.state,
                    expected_direction="inbound",
                    grant_status=grant.status if grant.peer_id == peer_id else None,
                    serial_matches=grant.cert_serial == expected_serial,
                )
            return await self._peer_in(conn, peer_id)

    async def update_outbound_credentials(
        self,
        peer_id: uuid.UUID,
        *,
        new: domain.NewCertificate,
        ca_bundle_pem: str,
        sealed_key: bytes,
        now: dt.datetime,
    ) -> PeerRow:
        """An active outbound peer's certificate, CA bundle and sealed key, replaced at once."""
        async with self._engine.begin() as conn:
            won = await conn.execute(
                update(_P)
                .where(_P.c.id == peer_id, _P.c.direction == "outbound", _P.c.state == "active")
                .values(
                    cert_serial=new.cert_serial,
                    cert_pem=new.cert_pem,
                    cert_not_after=new.cert_not_after,
                    ca_bundle_pem=ca_bundle_pem,
                    sealed_client_key=sealed_key,
                    updated_at=now,
                )
                .returning(_P.c.id)
            )
            if won.first() is None:
                current = await self._peer_in(conn, peer_id)
                raise domain.rotation_refusal(
                    direction=current.direction,
                    state=current.state,
                    expected_direction="outbound",
                    grant_status="active",  # no grant of ours is involved on this side
                    serial_matches=True,
                )
            return await self._peer_in(conn, peer_id)

    async def sealed_client_key(self, peer_id: uuid.UUID) -> tuple[PeerRow, bytes | None]:
        """The peer and its sealed key, read in one statement: two reads could pair the
        certificate from before a renewal stored with the key from after it."""
        query = _PEER_SELECT.add_columns(_P.c.sealed_client_key).where(_P.c.id == peer_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise domain.PeerNotFound(str(peer_id))
        blob = row._mapping["sealed_client_key"]
        return _peer(row), None if blob is None else bytes(blob)

    async def sealed_client_keys(self) -> list[tuple[uuid.UUID, bytes]]:
        query = select(_P.c.id, _P.c.sealed_client_key).where(_P.c.sealed_client_key.is_not(None))
        async with self._engine.connect() as conn:
            return [(r.id, bytes(r.sealed_client_key)) for r in (await conn.execute(query)).all()]

    async def replace_sealed_client_key(
        self, peer_id: uuid.UUID, old: bytes, new: bytes, *, now: dt.datetime
    ) -> bool:
        """Swap a sealed key only if it is still ``old`` (a concurrent rotation wins otherwise)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(_P)
                .where(_P.c.id == peer_id, _P.c.sealed_client_key == old)
                .values(sealed_client_key=new, updated_at=now)
                .returning(_P.c.id)
            )
            return result.first() is not None

    # ---- helpers -------------------------------------------------------------------

    async def _grant_in(self, conn: AsyncConnection, grant_id: uuid.UUID) -> GrantRow:
        row = (await conn.execute(_GRANT_SELECT.where(_G.c.id == grant_id))).first()
        if row is None:
            raise domain.GrantNotFound(str(grant_id))
        return _grant(row)

    async def _peer_in(self, conn: AsyncConnection, peer_id: uuid.UUID) -> PeerRow:
        row = (await conn.execute(_PEER_SELECT.where(_P.c.id == peer_id))).first()
        if row is None:
            raise domain.PeerNotFound(str(peer_id))
        return _peer(row)


def _dialect_insert(db: Database) -> Any:
    return sqlite_insert if db.is_sqlite else postgresql_insert
