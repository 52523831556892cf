"""What resource-service accepts: resource kinds, visibilities, limits, cursors, search text
and imported rows.

Pure rules, no gRPC and no SQL. Every check raises :class:`InvalidInput` with a stable
reason and, where a caller can fix fields, every problem as a ``(field, description)``
violation. Ids and UUIDs are checked here before anything reaches a query, so the store
only ever sees values of the shapes it stores.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from mosaic.search import query_problem
from mosaic.x509ext import canonical_uuid

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_IMPORT_ITEMS",
    "MAX_LIMIT",
    "MAX_TEAMS",
    "MAX_TITLE_CHARS",
    "RESOURCE_KINDS",
    "InvalidInput",
    "ResourceRow",
    "RowInput",
    "Visibility",
    "check_batch_size",
    "check_id",
    "check_kind",
    "check_limit",
    "check_query",
    "parse_after_id",
    "parse_visibility",
    "validate_rows",
]

# Allowlist of resource kinds (DESIGN.md "Scope").
RESOURCE_KINDS: Final = frozenset({"tasks", "notes", "memory", "credentials", "api_keys"})
MAX_LIMIT: Final = 10_000
MAX_TITLE_CHARS: Final = 1000
MAX_BODY_BYTES: Final = 100 * 1024
# Bounds the IN list a single visibility can put in a query (mosaic.scope refuses more in
# a grant, MAX_TEAMS_PER_FILTER).
MAX_TEAMS: Final = 1000
MAX_IMPORT_ITEMS: Final = 10_000

_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Reasons (ErrorInfo.reason) this service answers with.
UNKNOWN_RESOURCE: Final = "UNKNOWN_RESOURCE"
RESOURCE_NOT_FOUND: Final = "RESOURCE_NOT_FOUND"
INVALID_VISIBILITY: Final = "INVALID_VISIBILITY"
INVALID_LIMIT: Final = "INVALID_LIMIT"
INVALID_CURSOR: Final = "INVALID_CURSOR"
INVALID_ID: Final = "INVALID_ID"
INVALID_QUERY: Final = "INVALID_QUERY"
INVALID_ITEMS: Final = "INVALID_ITEMS"


class InvalidInput(ValueError):
    """A request argument this service refuses; the servicer answers INVALID_ARGUMENT."""

    def __init__(
        self, reason: str, message: str, violations: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.violations = tuple(violations)


@dataclass(frozen=True, slots=True)
class Visibility:
    """Rows of ``owner`` that are personal (when ``include_personal``) or in ``teams``."""

    owner: uuid.UUID
    teams: tuple[uuid.UUID, ...]
    include_personal: bool

    @property
    def sees_nothing(self) -> bool:
        return not self.include_personal and not self.teams


@dataclass(frozen=True, slots=True)
class RowInput:
    """One row as a caller sent it, before validation.

    ``updated_at_problem`` is set by the caller when the wire value could not even be read
    (e.g. a timestamp out of range), so that it is reported with every other problem.
    """

    id: str
    resource: str
    owner_user_id: str
    team_id: str
    title: str
    body: str
    updated_at: dt.datetime | None = None
    updated_at_problem: str = ""


@dataclass(frozen=True, slots=True)
class ResourceRow:
    """A validated row, ready to store."""

    id: str
    resource: str
    owner_user_id: uuid.UUID
    team_id: uuid.UUID | None
    title: str
    body: str
    updated_at: dt.datetime


def check_kind(kind: str) -> str:
    if kind not in RESOURCE_KINDS:
        raise InvalidInput(
            UNKNOWN_RESOURCE,
            "unknown resource kind; expected one of " + ", ".join(sorted(RESOURCE_KINDS)),
            [("resource", "not in the allowlist")],
        )
    return kind


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(
            INVALID_LIMIT,
            f"limit must be between 1 and {MAX_LIMIT}",
            [("limit", f"{limit} is outside 1..{MAX_LIMIT}")],
        )
    return limit


def check_id(row_id: str, field: str = "id") -> str:
    if _ID.fullmatch(row_id) is None:
        raise InvalidInput(
            INVALID_ID,
            "invalid id: 1 to 64 characters of A-Z a-z 0-9 . _ : -",
            [(field, "not a valid id")],
        )
    return row_id


def parse_after_id(after_id: str) -> str:
    """The keyset cursor: "" (from the start) or an id; anything else is refused."""
    if after_id == "":
        return ""
    try:
        return check_id(after_id, "after_id")
    except InvalidInput as exc:
        raise InvalidInput(
            INVALID_CURSOR, "after_id must be empty or an id from a previous page", exc.violations
        ) from None


def parse_visibility(
    owner_user_id: str, include_teams: Iterable[str], include_personal: bool
) -> Visibility:
    problems: list[tuple[str, str]] = []
    owner = _uuid_or_problem(owner_user_id, "visibility.owner_user_id", problems)
    teams: dict[uuid.UUID, None] = {}
    for i, team in enumerate(include_teams):
        if i == MAX_TEAMS:
            problems.append(("visibility.include_teams", f"more than {MAX_TEAMS} teams"))
            break
        parsed = _uuid_or_problem(team, f"visibility.include_teams[{i}]", problems)
        if parsed is not None:
            teams[parsed] = None
    if problems or owner is None:
        raise InvalidInput(INVALID_VISIBILITY, "invalid visibility", problems)
    return Visibility(owner, tuple(teams), include_personal)


def check_query(query: str) -> str:
    """Search text: any words, never query syntax (the store quotes it for its engine)."""
    problem = query_problem(query)
    if problem is not None:
        raise InvalidInput(INVALID_QUERY, problem, [("query", problem)])
    return query


def check_batch_size(count: int) -> None:
    """One import call carries at most MAX_IMPORT_ITEMS rows (the CLI sends 500 at a time)."""
    if count > MAX_IMPORT_ITEMS:
        raise InvalidInput(
            INVALID_ITEMS,
            f"at most {MAX_IMPORT_ITEMS} rows per import call",
            [("items", f"{count} rows")],
        )


def validate_rows(
    items: Sequence[RowInput | None], now: dt.datetime, *, field: str = "items"
) -> list[ResourceRow]:
    """Every row checked; any problem rejects the whole batch with every problem listed.

    ``None`` marks a position the caller already rejected for reasons of its own (e.g. a
    JSON value that is not an object): it is skipped but keeps the numbering.
    """
    problems: list[tuple[str, str]] = []
    rows: list[ResourceRow] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(items):
        if item is None:
            continue
        at = f"{field}[{i}]"
        before = len(problems)
        if _ID.fullmatch(item.id) is None:
            problems.append((f"{at}.id", "not a valid id (1-64 of A-Z a-z 0-9 . _ : -)"))
        elif item.id in first_index:
            problems.append((f"{at}.id", f"duplicate of {field}[{first_index[item.id]}].id"))
        else:
            first_index[item.id] = i
        if item.resource not in RESOURCE_KINDS:
            problems.append(
                (f"{at}.resource", "unknown kind; one of " + ", ".join(sorted(RESOURCE_KINDS)))
            )
        owner = _uuid_or_problem(item.owner_user_id, f"{at}.owner_user_id", problems)
        team = _uuid_or_problem(item.team_id, f"{at}.team_id", problems) if item.team_id else None
        if len(item.title) > MAX_TITLE_CHARS:
            problems.append((f"{at}.title", f"longer than {MAX_TITLE_CHARS} characters"))
        if len(item.body.encode()) > MAX_BODY_BYTES:
            problems.append((f"{at}.body", f"larger than {MAX_BODY_BYTES // 1024} KiB"))
        for name, value in (("title", item.title), ("body", item.body)):
            if "\x00" in value:
                problems.append((f"{at}.{name}", "contains a NUL character"))
        updated_at = _updated_at(item, now, f"{at}.updated_at", problems)
        if len(problems) == before and owner is not None and updated_at is not None:
            rows.append(
                ResourceRow(
                    id=item.id,
                    resource=item.resource,
                    owner_user_id=owner,
                    team_id=team,
                    title=item.title,
                    body=item.body,
                    updated_at=updated_at,
                )
            )
    if problems:
        bad = len({f.split("]", 1)[0] for f, _ in problems})
        raise InvalidInput(
            INVALID_ITEMS, f"{bad} of {len(items)} rows are invalid; nothing imported", problems
        )
    return rows


def _updated_at(
    item: RowInput, now: dt.datetime, field: str, problems: list[tuple[str, str]]
) -> dt.datetime | None:
    if item.updated_at_problem:
        problems.append((field, item.updated_at_problem))
        return None
    if item.updated_at is None:
        return now
    if item.updated_at.tzinfo is None:
        problems.append((field, "no time zone"))
        return None
    try:
        return item.updated_at.astimezone(dt.UTC)
    except OverflowError:
        problems.append((field, "out of range"))
        return None


def _uuid_or_problem(value: str, field: str, problems: list[tuple[str, str]]) -> uuid.UUID | None:
    try:
        return uuid.UUID(canonical_uuid(value))
    except ValueError:
        problems.append((field, "not a UUID"))
        return None
