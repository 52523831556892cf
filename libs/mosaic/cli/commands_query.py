"""`mosaic federation query PEER …` and `mosaic federation audit list`.

A query goes to this gateway's admin API, which asks the peer over mTLS (FederationClient);
nothing the peer returns is written to disk.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from google.protobuf import timestamp_pb2

from mosaic.cli.admin import call_admin, load_or_fail
from mosaic.cli.federation import audit_app, query_app
from mosaic.cli.output import EXIT_USAGE, emit, fail, fields, printable, state, table
from mosaic.federation.v1 import common_pb2, gateway_pb2, grants_pb2

_PEER_KEY = "mosaic.query.peer"
# ListRequest.page_size and SearchRequest.limit are int32 (and B caps either at the
# grant's max_rows_per_query, 10000 at most).
_MAX_LIMIT = 2**31 - 1


def _iso(ts: timestamp_pb2.Timestamp, present: bool = True) -> str | None:
    """ISO 8601 UTC with a Z; None when unset, or when not a time at all: a peer's row may
    carry any seconds and nanos (past year 9999, negative nanos), and --json must still
    print its one document."""
    if not present:
        return None
    try:
        return ts.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError):
        return None


def _updated_text(item: common_pb2.ResourceItem) -> str:
    """A row's updated_at for the human view: empty when unset, and what the peer sent
    when it is not a valid time (the JSON document has null)."""
    if not item.HasField("updated_at"):
        return ""
    ts = item.updated_at
    iso = _iso(ts)
    return iso if iso is not None else f"invalid time (seconds={ts.seconds}, nanos={ts.nanos})"


def _items(reply: gateway_pb2.QueryResponse) -> list[common_pb2.ResourceItem]:
    """The rows of a list, get or search answer (none for capabilities)."""
    verb = reply.WhichOneof("result")
    if verb == "get":
        return [reply.get.item]
    if verb == "list":
        return list(reply.list.items)
    if verb == "search":
        return list(reply.search.items)
    return []


def item_doc(item: common_pb2.ResourceItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "resource": item.resource,
        "title": item.title,
        "body": item.body,
        "owner_user_id": item.owner_user_id,
        "team_id": item.team_id or None,
        "updated_at": _iso(item.updated_at, item.HasField("updated_at")),
    }


def query_doc(reply: gateway_pb2.QueryResponse) -> dict[str, Any]:
    """DESIGN.md field names: items, next_page_token, stale, fetched_at (+ request_id, and
    truncated for a search)."""
    doc: dict[str, Any] = {}
    verb = reply.WhichOneof("result")
    if verb == "capabilities":
        caps = reply.capabilities
        doc["capabilities"] = {
            "resources": list(caps.resources),
            "verbs": list(caps.verbs),
            "max_rows_per_query": caps.max_rows_per_query,
            "rate_limit_per_second": caps.rate_limit_per_second,
            "rate_limit_burst": caps.rate_limit_burst,
            "server_version": caps.server_version,
            "grant_id": caps.grant_id,
            "subject_user_id": caps.subject_user_id,
        }
    elif verb is not None:  # list, get or search
        doc["items"] = [item_doc(i) for i in _items(reply)]
        if verb == "list":
            doc["next_page_token"] = reply.list.next_page_token or None
        elif verb == "search":
            doc["truncated"] = reply.search.truncated
    doc["stale"] = reply.stale
    doc["fetched_at"] = _iso(reply.fetched_at, reply.HasField("fetched_at"))
    doc["request_id"] = reply.request_id
    return doc


# A search row shows the start of its body; `get` shows the whole of it.
BODY_EXCERPT_CHARS = 160


def body_excerpt(body: str) -> str:
    """The start of a row's body for a table cell: its lines joined, cut at
    BODY_EXCERPT_CHARS. The table prints it as plain text, controls escaped."""
    flat = " ".join(body.split())
    if len(flat) <= BODY_EXCERPT_CHARS:
        return flat
    return flat[:BODY_EXCERPT_CHARS] + f"… ({len(flat) - BODY_EXCERPT_CHARS} more characters)"


def _item_fields(item: dict[str, Any], updated: str) -> dict[str, Any]:
    """One row for `fields`: every field, the body last and whole (its lines kept)."""
    return {
        "id": item["id"],
        "resource": item["resource"],
        "title": item["title"],
        "owner user": item["owner_user_id"],
        "team": item["team_id"] or "",
        "updated": updated,
        "body": item["body"],
    }


@query_app.callback()
def query(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(metavar="PEER", help="Peer id or name (outbound).")],
) -> None:
    """Query a peer gateway we enrolled with: capabilities, list, get or search."""
    ctx.meta[_PEER_KEY] = peer


def _query(ctx: typer.Context, request: gateway_pb2.QueryRequest) -> gateway_pb2.QueryResponse:
    """call_admin's Query; a failure also shows the peer's own reason and request id."""
    config = load_or_fail(ctx, state(ctx).home)
    return call_admin(
        ctx,
        config,
        lambda stub, md: stub.Query(request, metadata=md, timeout=30),
        error_metadata=("server_reason", "request_id"),
    )


def _check_limit(ctx: typer.Context, limit: int) -> None:
    if not 0 <= limit <= _MAX_LIMIT:
        fail(
            ctx,
            "USAGE",
            f"--limit must be between 0 and {_MAX_LIMIT}, got {limit}",
            "0 asks for the peer's default; the peer caps any limit at the grant's row cap",
            exit_code=EXIT_USAGE,
        )


def _run(ctx: typer.Context, request: gateway_pb2.QueryRequest) -> None:
    request.peer = ctx.meta[_PEER_KEY]
    reply = _query(ctx, request)
    doc = query_doc(reply)

    def human() -> None:
        note = " (STALE: peer unreachable, cached answer)" if doc["stale"] else ""
        updated = [_updated_text(i) for i in _items(reply)]
        if "capabilities" in doc:
            fields(f"capabilities of {request.peer}{note}", doc["capabilities"])
        elif request.WhichOneof("verb") == "get":
            item = doc["items"][0]
            fields(
                f"{request.peer}: {item['resource']} {item['id']}{note}",
                _item_fields(item, updated[0]),
            )
        else:
            with_body = request.WhichOneof("verb") == "search"
            table(
                f"{request.peer}: {len(doc['items'])} row(s){note}",
                ["id", "resource", "title", "team", "updated"] + (["body"] if with_body else []),
                [
                    (i["id"], i["resource"], i["title"], i["team_id"] or "", when)
                    + ((body_excerpt(i["body"]),) if with_body else ())
                    for i, when in zip(doc["items"], updated, strict=True)
                ],
            )
            if doc.get("next_page_token"):
                # The peer's token, as sent: shown, never obeyed by the terminal.
                typer.echo(
                    f"next page: --page-token {printable(doc['next_page_token'], line=True)}"
                )
            if doc.get("truncated"):
                typer.echo(
                    "TRUNCATED: the peer cut this answer to fit one message and more rows "
                    "may match; narrow the search with more words"
                )
        typer.echo(
            f"fetched at {doc['fetched_at']}, peer request id "
            + printable(doc["request_id"], line=True)
        )

    emit(ctx, doc, human)


@query_app.command("capabilities")
def query_capabilities(ctx: typer.Context) -> None:
    """What the grant lets us read: resources, verbs, row cap, rate limit."""
    _run(ctx, gateway_pb2.QueryRequest(capabilities=gateway_pb2.CapabilitiesRequest()))


@query_app.command("list")
def query_list(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(metavar="RESOURCE")],
    limit: Annotated[
        int,
        typer.Option(
            "--limit", help="Rows per page, capped by the grant; 0: the peer's default page."
        ),
    ] = 0,
    page_token: Annotated[
        str, typer.Option("--page-token", help="next_page_token of the previous page.")
    ] = "",
) -> None:
    """One page of RESOURCE rows, in id order."""
    _check_limit(ctx, limit)
    _run(
        ctx,
        gateway_pb2.QueryRequest(
            list=gateway_pb2.ListRequest(resource=resource, page_size=limit, page_token=page_token)
        ),
    )


@query_app.command("get")
def query_get(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(metavar="RESOURCE")],
    row_id: Annotated[str, typer.Argument(metavar="ID")],
) -> None:
    """One row by id."""
    _run(ctx, gateway_pb2.QueryRequest(get=gateway_pb2.GetRequest(resource=resource, id=row_id)))


@query_app.command("search")
def query_search(
    ctx: typer.Context,
    resource: Annotated[str, typer.Argument(metavar="RESOURCE")],
    text: Annotated[str, typer.Argument(metavar="TEXT")],
    limit: Annotated[
        int,
        typer.Option("--limit", help="Most rows to return, capped by the grant; 0: the cap."),
    ] = 0,
) -> None:
    """Rows of RESOURCE containing every word of TEXT."""
    _check_limit(ctx, limit)
    _run(
        ctx,
        gateway_pb2.QueryRequest(
            search=gateway_pb2.SearchRequest(resource=resource, query=text, limit=limit)
        ),
    )


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    peer: Annotated[str | None, typer.Option("--peer", help="Peer id or name.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time; rows at or after it.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most rows (1-1000).")] = 100,
) -> None:
    """Peer requests this gateway served or refused, newest first."""
    if not 1 <= limit <= 1000:
        fail(
            ctx,
            "USAGE",
            f"--limit must be between 1 and 1000, got {limit}",
            "pass --limit 1 to 1000 (default 100); --since reaches further back",
            exit_code=EXIT_USAGE,
        )
    request = gateway_pb2.ListAuditRequest(peer_id=peer or "", limit=limit)
    if since is not None:
        try:
            parsed = dt.datetime.fromisoformat(since)
            request.since.FromDatetime(parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC))
        except (ValueError, OverflowError):  # not a time, or out of range once in UTC
            fail(
                ctx,
                "USAGE",
                f"--since must be an ISO 8601 time, got {since!r}",
                "e.g. 2030-01-31T12:00:00Z",
                exit_code=EXIT_USAGE,
            )
    config = load_or_fail(ctx, state(ctx).home)
    reply = call_admin(ctx, config, lambda stub, md: stub.ListAudit(request, metadata=md))
    names = _peer_names(ctx, config) if any(e.peer_id for e in reply.entries) else {}
    docs = [
        {
            "id": e.id,
            "created_at": _iso(e.created_at),
            "request_id": e.request_id,
            "peer_id": e.peer_id or None,
            # A removed peer's rows keep its id; its name is gone with it.
            "peer_name": names.get(e.peer_id),
            "grant_id": e.grant_id or None,
            "subject_user_id": e.subject_user_id or None,
            "verb": e.verb,
            "resource": e.resource or None,
            "status": e.status,
            "outcome": e.outcome,
            "reason": e.reason or None,
            "query_hash": e.query_hash or None,
            "bytes_out": e.bytes_out,
            "latency_ms": round(e.latency_ms, 3),
            "source_address": e.source_address or None,
        }
        for e in reply.entries
    ]
    emit(
        ctx,
        {"entries": docs},
        lambda: table(
            f"audit ({len(docs)})",
            ["time", "request id", "peer", "verb", "resource", "status", "outcome", "reason"],
            [
                (
                    d["created_at"],
                    d["request_id"],
                    d["peer_name"] or d["peer_id"] or "",
                    d["verb"],
                    d["resource"] or "",
                    d["status"],
                    d["outcome"],
                    d["reason"] or "",
                )
                for d in docs
            ],
        ),
    )


def _peer_names(ctx: typer.Context, config: Any) -> dict[str, str]:
    """Peer id -> name for every peer this gateway knows, in one admin call."""
    reply = call_admin(
        ctx, config, lambda stub, md: stub.ListPeers(grants_pb2.ListPeersRequest(), metadata=md)
    )
    return {p.id: p.name for p in reply.peers}
