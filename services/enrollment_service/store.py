"""enrollment-service tables: enrollment tokens, stored as a hash only.

A token moves ``unused → redeeming → used``. Claiming (``unused → redeeming``) is one
conditional ``UPDATE … RETURNING``, so among concurrent redeems of one token exactly
one wins on both engines; a claim whose redeem failed goes back to ``unused``, and one
left behind by a crashed redeem may be taken over once ``claimed_until`` has passed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Enum,
    Index,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    Uuid,
    and_,
    insert,
    or_,
    select,
    update,
)

from enrollment_service.domain import NewToken, TokenView
from mosaic.db import Database
from mosaic.sqltypes import UtcDateTime

metadata = MetaData()

TOKEN_STATES = ("unused", "redeeming", "used")

federation_enrollment_tokens = Table(
    "federation_enrollment_tokens",
    metadata,
    Column("id", Uuid, primary_key=True),
    # SHA-256 of the token (see enrollment_service.domain for why not keyed); never the token.
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

_T = federation_enrollment_tokens


@dataclass(frozen=True)
class TokenRow:
    id: uuid.UUID
    token_hint: str
    grant_id: uuid.UUID
    peer_id: uuid.UUID
    state: str
    created_at: dt.datetime
    expires_at: dt.datetime
    claimed_until: dt.datetime | None
    used_at: dt.datetime | None
    used_by_serial: str | None
    failed_attempts: int

    def view(self) -> TokenView:
        return TokenView(
            state=self.state, expires_at=self.expires_at, claimed_until=self.claimed_until
        )


_COLUMNS = (
    _T.c.id,
    _T.c.token_hint,
    _T.c.grant_id,
    _T.c.peer_id,
    _T.c.state,
    _T.c.created_at,
    _T.c.expires_at,
    _T.c.claimed_until,
    _T.c.used_at,
    _T.c.used_by_serial,
    _T.c.failed_attempts,
)


def _row(row: RowMapping) -> TokenRow:
    return TokenRow(**row)


class TokenStore:
    """The only code that reads or writes federation_enrollment_tokens."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    async def create(
        self, token: NewToken, *, grant_id: uuid.UUID, peer_id: uuid.UUID, now: dt.datetime
    ) -> TokenRow:
        token_id = uuid.uuid4()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(_T).values(
                    id=token_id,
                    token_hash=token.token_hash,
                    token_hint=token.token_hint,
                    grant_id=grant_id,
                    peer_id=peer_id,
                    state="unused",
                    created_at=now,
                    expires_at=token.expires_at,
                    failed_attempts=0,
                )
            )
            row = (
                (await conn.execute(select(*_COLUMNS).where(_T.c.id == token_id))).mappings().one()
            )
        return _row(row)

    async def claim(
        self, token_hash: str, *, now: dt.datetime, until: dt.datetime
    ) -> TokenRow | None:
        """Take the token for one redeem: unused (or an abandoned claim) and unexpired."""
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        update(_T)
                        .where(
                            _T.c.token_hash == token_hash,
                            _T.c.expires_at > now,
                            or_(
                                _T.c.state == "unused",
                                and_(_T.c.state == "redeeming", _T.c.claimed_until < now),
                            ),
                        )
                        .values(state="redeeming", claimed_until=until)
                        .returning(*_COLUMNS)
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _row(row)

    async def find(self, token_hash: str) -> TokenRow | None:
        async with self._engine.connect() as conn:
            row = (
                (await conn.execute(select(*_COLUMNS).where(_T.c.token_hash == token_hash)))
                .mappings()
                .first()
            )
        return None if row is None else _row(row)

    async def release(self, claim: TokenRow, *, failed: bool) -> None:
        """Give a claimed token back (unused); ``failed`` counts a failed attempt.

        Only ``claim`` itself: if it outlived its ``claimed_until`` and another redeem has
        taken the token over since, that claim is left alone."""
        values: dict[str, object] = {"state": "unused", "claimed_until": None}
        if failed:
            values["failed_attempts"] = _T.c.failed_attempts + 1
        async with self._engine.begin() as conn:
            await conn.execute(
                update(_T)
                .where(
                    _T.c.id == claim.id,
                    _T.c.state == "redeeming",
                    _T.c.claimed_until == claim.claimed_until,
                )
                .values(**values)
            )

    async def mark_used(self, token_id: uuid.UUID, *, serial: str, now: dt.datetime) -> bool:
        """redeeming → used, recording when and for which certificate."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    update(_T)
                    .where(_T.c.id == token_id, _T.c.state == "redeeming")
                    .values(state="used", used_at=now, used_by_serial=serial, claimed_until=None)
                    .returning(_T.c.id)
                )
            ).first()
        return row is not None
