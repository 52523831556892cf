"""`mosaic resources import FILE`: load rows into the reference data source.

FILE is a JSON array of objects with ``id``, ``resource``, ``owner_user_id``, ``title``,
``body``, optionally ``team_id`` (a UUID; empty, null or absent for a personal row) and
``updated_at`` (ISO 8601 with a time zone; absent means now). The whole file is checked
first, with the same rules as resource-service, and nothing is sent unless every row is
valid; then the rows go through the gateway's admin API in batches of at most
:data:`BATCH_SIZE` rows and ``mosaic.rpc.options.ROWS_BUDGET_BYTES`` bytes. Import is an
upsert by id, so re-running a file is harmless.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mosaic.cli.admin import call_admin, load_or_fail
from mosaic.cli.output import EXIT_USAGE, emit, fail, state
from mosaic.federation.v1 import common_pb2, gateway_pb2_grpc, resources_pb2
from mosaic.rpc.options import in_batches
from mosaic.text import key_path

BATCH_SIZE = 500
_FIELDS = ("id", "resource", "owner_user_id", "team_id", "title", "body", "updated_at")
_REQUIRED = ("id", "resource", "owner_user_id", "title", "body")
_FILE_HINT = (
    "pass a JSON array of objects with id, resource, owner_user_id, team_id, title, body "
    "[, updated_at]"
)

_ROW_INDEX = re.compile(r"items\[(\d+)\]")

resources_app = typer.Typer(
    help="The reference data source (resource-service) behind this gateway.",
    no_args_is_help=True,
)


@resources_app.command("import")
def import_rows(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSON array of rows.", show_default=False)],
) -> None:
    """Insert or replace rows (by id) in resource-service, through the gateway."""
    config = load_or_fail(ctx, state(ctx).home)
    rows = _read_rows(ctx, file)
    items = _to_items(ctx, rows)
    imported = 0
    # 500 rows of 10 KiB would not fit in one gRPC message: batches go by size as well.
    for batch in in_batches(items, max_items=BATCH_SIZE):
        request = resources_pb2.ImportResourcesRequest(items=batch)
        try:
            reply = call_admin(
                ctx,
                config,
                _send(request),
                if_interrupted=f"{imported} rows were imported before this batch, which may "
                "have been too: import is by id, so running it again is safe",
            )
        except typer.Exit:
            if imported:  # an earlier batch got in; say so (stderr keeps --json stdout clean)
                typer.echo(f"{imported} rows were imported before this failure", err=True)
            raise
        imported += reply.imported
    emit(ctx, {"imported": imported}, lambda: typer.echo(f"imported {imported} rows"))


def _send(
    request: resources_pb2.ImportResourcesRequest,
) -> Callable[
    [gateway_pb2_grpc.FederationAdminStub, tuple[tuple[str, str], ...]],
    Awaitable[resources_pb2.ImportResourcesResponse],
]:
    async def send(
        stub: gateway_pb2_grpc.FederationAdminStub, metadata: tuple[tuple[str, str], ...]
    ) -> resources_pb2.ImportResourcesResponse:
        return await stub.ImportResources(request, metadata=metadata, timeout=120.0)

    return send


def _read_rows(ctx: typer.Context, file: Path) -> list[Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:  # the command line names no readable file: bad usage, as --scope
        fail(
            ctx,
            "USAGE",
            f"cannot read {file}: {exc.strerror or type(exc).__name__}",
            "pass FILE, a readable JSON file",
            exit_code=EXIT_USAGE,
        )
    except UnicodeDecodeError as exc:  # what the file holds: the operation fails (exit 1)
        fail(ctx, "INVALID_FILE", f"cannot read {file}: {exc}", _FILE_HINT)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        fail(ctx, "INVALID_FILE", f"{file} is not JSON: {exc}", _FILE_HINT)
    except RecursionError:
        fail(ctx, "INVALID_FILE", f"{file} nests JSON too deeply", _FILE_HINT)
    if not isinstance(doc, list):
        fail(ctx, "INVALID_FILE", f"{file} is not a JSON array", _FILE_HINT)
    return doc


def _to_items(ctx: typer.Context, rows: list[Any]) -> list[common_pb2.ResourceItem]:
    """Rows as protos; every problem in the whole file reported at once (exit 1)."""
    from resource_service.domain import InvalidInput, RowInput, validate_rows

    problems: list[tuple[str, str]] = []
    inputs: list[RowInput | None] = []
    for i, row in enumerate(rows):
        at = f"items[{i}]"
        if not isinstance(row, dict):
            problems.append((at, "not an object"))
            inputs.append(None)
            continue
        for key in row:
            if key not in _FIELDS:
                problems.append((key_path(at, key), "unknown field"))
        for key in _REQUIRED:
            if key not in row:
                problems.append((f"{at}.{key}", "missing"))
        values: dict[str, str] = {}
        for key in _FIELDS[:-1]:
            value = row.get(key)
            if value is None:  # missing (reported above), or null: a personal row's team_id
                if key in row and key != "team_id":
                    problems.append((f"{at}.{key}", "not a string (null)"))
                value = ""
            elif not isinstance(value, str):
                problems.append((f"{at}.{key}", "not a string"))
                value = ""
            elif not _is_unicode_text(value):  # JSON allows lone surrogates ("\ud800")
                problems.append((f"{at}.{key}", "not valid Unicode text"))
                value = ""
            values[key] = value
        updated_at, problem = _parse_time(row.get("updated_at"))
        inputs.append(RowInput(**values, updated_at=updated_at, updated_at_problem=problem))
    try:
        validate_rows(inputs, dt.datetime.now(dt.UTC))
    except InvalidInput as exc:
        problems.extend(exc.violations)
    if problems:
        # One line per field (a missing id is not also "not a valid id"), in row order.
        first: dict[str, str] = {}
        for field, text in problems:
            first.setdefault(field, text)
        ordered = sorted(first.items(), key=lambda p: _row_index(p[0]))
        bad = len({_row_index(field) for field in first})
        fail(
            ctx,
            "INVALID_ITEMS",
            f"{bad} of {len(rows)} rows are invalid; nothing imported",
            "fix the rows listed and run the import again",
            extra={"violations": [f"{field}: {text}" for field, text in ordered]},
        )
    items = []
    for row_input in inputs:
        assert row_input is not None  # every position was an object, or we failed above
        item = common_pb2.ResourceItem(
            id=row_input.id,
            resource=row_input.resource,
            owner_user_id=row_input.owner_user_id,
            team_id=row_input.team_id,
            title=row_input.title,
            body=row_input.body,
        )
        if row_input.updated_at is not None:
            item.updated_at.FromDatetime(row_input.updated_at)
        items.append(item)
    return items


def _is_unicode_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _row_index(field: str) -> int:
    match = _ROW_INDEX.match(field)
    return int(match.group(1)) if match else -1


def _parse_time(value: Any) -> tuple[dt.datetime | None, str]:
    if value is None:
        return None, ""
    if not isinstance(value, str):
        return None, "not a string"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None, "not an ISO 8601 date-time"
    if parsed.tzinfo is None:
        return None, "no time zone (add Z or +00:00)"
    try:
        return parsed.astimezone(dt.UTC), ""
    except OverflowError:
        return None, "out of range"
