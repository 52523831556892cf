"""ResourceSource: proto in, domain checks, one store call, proto out.

The federation gateway calls List/Get/Search on its hot path with the visibility a grant
allows; Import is reached through the gateway's admin API (`mosaic resources import`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import grpc

from mosaic.errors import ServiceError, invalid_argument, not_found
from mosaic.federation.v1 import common_pb2, resources_pb2, resources_pb2_grpc
from mosaic.rpc.options import ROWS_BUDGET_BYTES, encoded_size
from mosaic.sqltypes import utcnow
from resource_service import domain
from resource_service.store import IdsTaken, ReadRow, ResourceStore

# One message for "missing" and "not visible": callers must not learn which it was.
_NOT_FOUND_MESSAGE = "no such resource"


def _refused(exc: domain.InvalidInput) -> ServiceError:
    """A domain refusal as INVALID_ARGUMENT with its reason and every violation."""
    return invalid_argument(exc.reason, exc.message, violations=exc.violations)


def _visibility(v: common_pb2.Visibility) -> domain.Visibility:
    return domain.parse_visibility(v.owner_user_id, v.include_teams, v.include_personal)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)  # for naive UTC values, as SQLite stores them


def _uuid_text(raw: Any) -> str:
    """A stored UUID (SQLite: 32 hex digits; Postgres: a UUID value) as canonical text."""
    return str(uuid.UUID(str(raw)))


def _since_epoch(raw: Any) -> dt.timedelta:
    """A stored time (SQLite: naive UTC text; Postgres: an aware datetime) since the epoch."""
    when = dt.datetime.fromisoformat(raw) if isinstance(raw, str) else raw
    return when - (_NAIVE_EPOCH if when.tzinfo is None else _EPOCH)


def _items(rows: Sequence[ReadRow]) -> list[common_pb2.ResourceItem]:
    """Rows read with store.READ_COLUMNS as messages. On the hot path of every List: a
    page's rows share one owner and a few teams, so each distinct UUID is formatted once;
    timestamps are set from integer arithmetic rather than Timestamp.FromDatetime."""
    text: dict[Any, str] = {None: ""}
    items = []
    for row_id, kind, owner, team, title, body, updated_at in rows:
        owner_text = text.get(owner)
        if owner_text is None:
            owner_text = text[owner] = _uuid_text(owner)
        team_text = text.get(team)
        if team_text is None:
            team_text = text[team] = _uuid_text(team)
        item = common_pb2.ResourceItem(
            id=row_id,
            resource=kind,
            owner_user_id=owner_text,
            team_id=team_text,
            title=title,
            body=body,
        )
        since = _since_epoch(updated_at)
        stamp = item.updated_at
        stamp.seconds = since.days * 86400 + since.seconds
        stamp.nanos = since.microseconds * 1000
        items.append(item)
    return items


def _within_reply_size(items: list[common_pb2.ResourceItem]) -> list[common_pb2.ResourceItem]:
    """The leading items that fit in ROWS_BUDGET_BYTES (at least one: a single row is far
    smaller), so that large bodies shorten a page instead of making a reply no gRPC peer
    accepts."""
    total = 0
    for count, item in enumerate(items):
        total += encoded_size(item)
        if total > ROWS_BUDGET_BYTES and count:
            return items[:count]
    return items


def _row_input(item: common_pb2.ResourceItem) -> domain.RowInput:
    updated_at: dt.datetime | None = None
    problem = ""
    if item.HasField("updated_at"):
        try:
            updated_at = item.updated_at.ToDatetime(tzinfo=dt.UTC)
        except (ValueError, OverflowError):
            problem = "not a valid timestamp"
    return domain.RowInput(
        id=item.id,
        resource=item.resource,
        owner_user_id=item.owner_user_id,
        team_id=item.team_id,
        title=item.title,
        body=item.body,
        updated_at=updated_at,
        updated_at_problem=problem,
    )


class ResourceSourceServicer(resources_pb2_grpc.ResourceSourceServicer):
    def __init__(self, store: ResourceStore) -> None:
        self._store = store

    async def ListResources(
        self, request: resources_pb2.ListResourcesRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.ListResourcesResponse:
        try:
            kind = domain.check_kind(request.resource)
            visibility = _visibility(request.visibility)
            limit = domain.check_limit(request.limit)
            after_id = domain.parse_after_id(request.after_id)
        except domain.InvalidInput as exc:
            raise _refused(exc) from None
        rows, more = await self._store.list_page(kind, visibility, after_id, limit)
        items = _within_reply_size(_items(rows))
        more = more or len(items) < len(rows)  # a short page, when rows are large
        return resources_pb2.ListResourcesResponse(
            items=items, next_after_id=items[-1].id if more else ""
        )

    async def GetResource(
        self, request: resources_pb2.GetResourceRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.GetResourceResponse:
        try:
            kind = domain.check_kind(request.resource)
            visibility = _visibility(request.visibility)
            row_id = domain.check_id(request.id)
        except domain.InvalidInput as exc:
            raise _refused(exc) from None
        row = await self._store.get(kind, visibility, row_id)
        if row is None:
            raise not_found(domain.RESOURCE_NOT_FOUND, _NOT_FOUND_MESSAGE)
        return resources_pb2.GetResourceResponse(item=_items([row])[0])

    async def SearchResources(
        self, request: resources_pb2.SearchResourcesRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.SearchResourcesResponse:
        try:
            kind = domain.check_kind(request.resource)
            visibility = _visibility(request.visibility)
            query = domain.check_query(request.query)
            limit = domain.check_limit(request.limit)
        except domain.InvalidInput as exc:
            raise _refused(exc) from None
        rows, cut = await self._store.search(kind, visibility, query, limit)
        items = _within_reply_size(_items(rows))
        # Rows left out to fit one message are said so: the caller must not take a short
        # reply for every match there is (a reply short only by the limit is not cut).
        truncated = len(items) < len(rows) or (cut and len(items) < limit)
        return resources_pb2.SearchResourcesResponse(items=items, truncated=truncated)

    async def ImportResources(
        self, request: resources_pb2.ImportResourcesRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.ImportResourcesResponse:
        try:
            domain.check_batch_size(len(request.items))
            rows = domain.validate_rows([_row_input(i) for i in request.items], utcnow())
        except domain.InvalidInput as exc:
            raise _refused(exc) from None
        try:
            imported = await self._store.upsert(rows)
        except IdsTaken as exc:
            problems = [
                (f"items[{i}].id", f"{rows[i].id!r} is already another user's or resource's row")
                for i in exc.positions
            ]
            raise _refused(
                domain.InvalidInput(
                    domain.INVALID_ITEMS,
                    f"{len(problems)} of {len(rows)} rows reuse the id of a row of another "
                    "owner or resource; nothing imported",
                    problems,
                )
            ) from None
        return resources_pb2.ImportResourcesResponse(imported=imported)
