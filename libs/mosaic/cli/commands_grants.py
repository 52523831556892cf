"""`mosaic federation grant …` and `mosaic federation peer …`: grants we give, peers we know."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from google.protobuf import timestamp_pb2

from mosaic.cli.admin import AlreadyDone, call_admin, load_or_fail
from mosaic.cli.federation import grant_app, peer_app
from mosaic.cli.output import EXIT_USAGE, emit, fail, fields, state, table
from mosaic.federation.v1 import grants_pb2
from mosaic.text import enum_word

GRANT_STATUSES = ("pending", "active", "revoked", "expired")
PEER_STATES = ("pending", "active", "suspended", "revoked")
PEER_DIRECTIONS = ("inbound", "outbound")
# A scope is a small document: 5 resources with 1000 teams each is about 200 KiB.
MAX_SCOPE_FILE_BYTES = 1024 * 1024


# ---- documents (DESIGN.md "CLI contract" field names) ----------------------------------


def iso(ts: timestamp_pb2.Timestamp, present: bool) -> str | None:
    """ISO 8601 UTC with a Z, or None for an unset timestamp."""
    if not present:
        return None
    return ts.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def grant_doc(grant: grants_pb2.Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "peer_id": grant.peer_id,
        "peer_name": grant.peer_name,
        "subject_user_id": grant.subject_user_id,
        "status": enum_word(grant.status, grants_pb2.GrantStatus, "GRANT_STATUS_"),
        "scope": json.loads(grant.scope_json) if grant.scope_json else None,
        "sensitive": grant.sensitive,
        "created_at": iso(grant.created_at, grant.HasField("created_at")),
        "activated_at": iso(grant.activated_at, grant.HasField("activated_at")),
        "expires_at": iso(grant.expires_at, grant.HasField("expires_at")),
        "revoked_at": iso(grant.revoked_at, grant.HasField("revoked_at")),
        "revoke_reason": grant.revoke_reason or None,
        "cert_serial": grant.cert_serial or None,
    }


def peer_doc(peer: grants_pb2.Peer) -> dict[str, Any]:
    return {
        "id": peer.id,
        "name": peer.name,
        "display_name": peer.display_name,
        "direction": enum_word(peer.direction, grants_pb2.PeerDirection, "PEER_DIRECTION_"),
        "state": enum_word(peer.state, grants_pb2.PeerState, "PEER_STATE_"),
        "state_reason": peer.state_reason or None,
        "endpoint": peer.endpoint or None,
        "cert_serial": peer.cert_serial or None,
        "cert_not_after": iso(peer.cert_not_after, peer.HasField("cert_not_after")),
        "created_at": iso(peer.created_at, peer.HasField("created_at")),
        "updated_at": iso(peer.updated_at, peer.HasField("updated_at")),
    }


def _grant_fields(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


def _grant_rows(docs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            d["id"],
            d["peer_name"],
            d["subject_user_id"],
            d["status"] + (" (sensitive)" if d["sensitive"] else ""),
            ", ".join(d["scope"]["resources"]) if d["scope"] else "",
            d["created_at"],
            d["expires_at"] or "",
        )
        for d in docs
    ]


def _peer_rows(docs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            d["id"],
            d["name"],
            d["direction"],
            d["state"] + (f" ({d['state_reason']})" if d["state_reason"] else ""),
            d["endpoint"] or "",
            d["cert_serial"] or "",
            d["cert_not_after"] or "",
        )
        for d in docs
    ]


# ---- local validation (bad usage → exit 2) ----------------------------------------------


def _usage(ctx: typer.Context, message: str, remediation: str = "") -> NoReturn:
    fail(ctx, "USAGE", message, remediation, exit_code=EXIT_USAGE)


def _uuid_arg(ctx: typer.Context, name: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        _usage(
            ctx,
            f"{name} must be a UUID, got {value!r}",
            "e.g. 3f2a1c9e-8b10-4f7c-9d55-0d5e7b0e5c2a",
        )


def _choice(ctx: typer.Context, name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        _usage(ctx, f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _parse_time(ctx: typer.Context, value: str) -> dt.datetime:
    """ISO 8601 as UTC; a time without an offset is taken as UTC. Exit 2 unless it is one,
    in years 1-9999 once in UTC (a protobuf Timestamp holds no other)."""
    try:
        parsed = dt.datetime.fromisoformat(value)
        return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError):  # not a time, or outside years 1-9999 in UTC
        _usage(
            ctx,
            f"--expires-at must be an ISO 8601 time in years 1-9999 (UTC), got {value!r}",
            "e.g. 2030-01-31T12:00:00Z",
        )


def _read_scope(ctx: typer.Context, path: Path) -> str:
    """The scope file's text; exit 2 if it cannot be read or is larger than
    MAX_SCOPE_FILE_BYTES (read no further: ``--scope /dev/zero`` never ends otherwise), exit
    1 (SCOPE_INVALID, as for any invalid scope) if it is not UTF-8."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SCOPE_FILE_BYTES + 1)
        if len(data) > MAX_SCOPE_FILE_BYTES:
            _usage(
                ctx,
                f"scope file {path} is larger than {MAX_SCOPE_FILE_BYTES // 2**20} MiB",
                'pass --scope with the scope JSON document (docs/ADMIN-CLI.md, "Scope")',
            )
        return data.decode("utf-8")
    except UnicodeDecodeError:  # what the file holds: refused like any invalid scope (exit 1)
        fail(
            ctx,
            "SCOPE_INVALID",
            f"scope file {path} is not UTF-8 text",
            'pass --scope with the scope JSON document (docs/ADMIN-CLI.md, "Scope")',
        )
    except OSError as exc:  # the command line names no readable file: bad usage
        reason = exc.strerror or type(exc).__name__
        _usage(
            ctx,
            f"cannot read scope file {path}: {reason}",
            "pass --scope with a readable JSON file",
        )


def _resolve_peer_id(ctx: typer.Context, config: Any, key: str) -> str:
    """A peer id from an id or a name (the admin API filters grants by id)."""
    try:
        return str(uuid.UUID(key))
    except ValueError:
        reply = call_admin(
            ctx,
            config,
            lambda stub, md: stub.GetPeer(grants_pb2.GetPeerRequest(id=key), metadata=md),
        )
        return str(reply.peer.id)


# ---- grant -----------------------------------------------------------------------------


@grant_app.command("create")
def grant_create(
    ctx: typer.Context,
    user: Annotated[str, typer.Option("--user", help="Local user (UUID) whose data is shared.")],
    peer_name: Annotated[str, typer.Option("--peer-name", help="Name of the peer gateway.")],
    scope: Annotated[
        Path, typer.Option("--scope", help='Scope JSON file (docs/ADMIN-CLI.md, "Scope").')
    ],
    allow_sensitive: Annotated[
        bool, typer.Option("--allow-sensitive", help="Allow credentials and api_keys.")
    ] = False,
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help="ISO 8601 time the grant ends.")
    ] = None,
) -> None:
    """Create a pending grant (and a pending peer placeholder if the name is new)."""
    subject = _uuid_arg(ctx, "--user", user)
    scope_text = _read_scope(ctx, scope)
    request = grants_pb2.CreateGrantRequest(
        subject_user_id=subject,
        peer_name=peer_name,
        scope_json=scope_text,
        allow_sensitive=allow_sensitive,
    )
    if expires_at is not None:
        request.expires_at.FromDatetime(_parse_time(ctx, expires_at))
    config = load_or_fail(ctx, state(ctx).home)
    reply = call_admin(
        ctx,
        config,
        lambda stub, md: stub.CreateGrant(request, metadata=md),
        if_interrupted="the grant may have been created: check "
        f"`mosaic federation grant list --peer {peer_name}` before you create it again",
    )
    doc = grant_doc(reply.grant)
    doc["peer"] = peer_doc(reply.peer)

    def human() -> None:
        fields("grant created", _grant_fields({k: v for k, v in doc.items() if k != "peer"}))
        typer.echo(
            f"next: `mosaic federation grant token {doc['id']}` makes the enrollment URL "
            f"for peer {reply.peer.name}"
        )

    emit(ctx, doc, human)


@grant_app.command("list")
def grant_list(
    ctx: typer.Context,
    peer: Annotated[str | None, typer.Option("--peer", help="Peer id or name.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, active, revoked or expired.")
    ] = None,
) -> None:
    """List grants, newest first."""
    request = grants_pb2.ListGrantsRequest()
    if status is not None:
        _choice(ctx, "--status", status, GRANT_STATUSES)
        request.status = grants_pb2.GrantStatus.Value("GRANT_STATUS_" + status.upper())
    config = load_or_fail(ctx, state(ctx).home)
    if peer:
        request.peer_id = _resolve_peer_id(ctx, config, peer)
    reply = call_admin(ctx, config, lambda stub, md: stub.ListGrants(request, metadata=md))
    docs = [grant_doc(g) for g in reply.grants]
    emit(
        ctx,
        {"grants": docs},
        lambda: table(
            f"grants ({len(docs)})",
            ["id", "peer", "subject user", "status", "resources", "created", "expires"],
            _grant_rows(docs),
        ),
    )


@grant_app.command("show")
def grant_show(ctx: typer.Context, grant_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show one grant and its peer."""
    request = grants_pb2.GetGrantRequest(id=_uuid_arg(ctx, "ID", grant_id))
    config = load_or_fail(ctx, state(ctx).home)
    reply = call_admin(ctx, config, lambda stub, md: stub.GetGrant(request, metadata=md))
    doc = grant_doc(reply.grant)
    doc["peer"] = peer_doc(reply.peer)
    emit(
        ctx,
        doc,
        lambda: fields(
            f"grant {doc['id']}", _grant_fields({k: v for k, v in doc.items() if k != "peer"})
        ),
    )


@grant_app.command("revoke")
def grant_revoke(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the grant).")] = "",
) -> None:
    """Revoke a grant for good; it cannot be made pending or active again."""
    request = grants_pb2.RevokeGrantRequest(id=_uuid_arg(ctx, "ID", grant_id), reason=reason)
    config = load_or_fail(ctx, state(ctx).home)
    done = "revoked"
    try:
        # A grant revoked already: the gateway has revoked its certificates again (what a
        # CA outage may have left undone), and there is nothing else to do.
        reply: Any = call_admin(
            ctx,
            config,
            lambda stub, md: stub.RevokeGrant(request, metadata=md),
            if_interrupted="the grant may have been revoked: check `mosaic federation grant "
            f"show {request.id}`, or revoke it again",
            done_if="GRANT_ALREADY_REVOKED",
        )
    except AlreadyDone:
        done = "was revoked already: nothing to do"
        get = grants_pb2.GetGrantRequest(id=request.id)
        reply = call_admin(ctx, config, lambda stub, md: stub.GetGrant(get, metadata=md))
    doc = grant_doc(reply.grant)
    emit(ctx, doc, lambda: fields(f"grant {doc['id']} {done}", _grant_fields(doc)))


# ---- peer ------------------------------------------------------------------------------


@peer_app.command("list")
def peer_list(
    ctx: typer.Context,
    direction: Annotated[
        str | None, typer.Option("--direction", help="inbound (we serve) or outbound (we query).")
    ] = None,
    peer_state: Annotated[
        str | None, typer.Option("--state", help="pending, active, suspended or revoked.")
    ] = None,
) -> None:
    """List peers: gateways we serve (inbound) and gateways we query (outbound)."""
    request = grants_pb2.ListPeersRequest()
    if direction is not None:
        _choice(ctx, "--direction", direction, PEER_DIRECTIONS)
        request.direction = grants_pb2.PeerDirection.Value("PEER_DIRECTION_" + direction.upper())
    if peer_state is not None:
        _choice(ctx, "--state", peer_state, PEER_STATES)
        request.state = grants_pb2.PeerState.Value("PEER_STATE_" + peer_state.upper())
    config = load_or_fail(ctx, state(ctx).home)
    reply = call_admin(ctx, config, lambda stub, md: stub.ListPeers(request, metadata=md))
    docs = [peer_doc(p) for p in reply.peers]
    emit(
        ctx,
        {"peers": docs},
        lambda: table(
            f"peers ({len(docs)})",
            ["id", "name", "direction", "state", "endpoint", "cert serial", "cert not after"],
            _peer_rows(docs),
        ),
    )


@peer_app.command("show")
def peer_show(ctx: typer.Context, peer: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show one peer (by id or name); for a peer we serve, each of its grants too."""
    request = grants_pb2.GetPeerRequest(id=peer)
    config = load_or_fail(ctx, state(ctx).home)
    reply = call_admin(ctx, config, lambda stub, md: stub.GetPeer(request, metadata=md))
    doc = peer_doc(reply.peer)
    grants: list[dict[str, Any]] = []
    if reply.peer.direction == grants_pb2.PEER_DIRECTION_INBOUND:
        # Each grant has its own certificate; the peer's cert_serial is only the newest.
        listed = call_admin(
            ctx,
            config,
            lambda stub, md: stub.ListGrants(
                grants_pb2.ListGrantsRequest(peer_id=reply.peer.id), metadata=md
            ),
        )
        grants = [grant_doc(g) for g in listed.grants]
        doc["grants"] = [{key: g[key] for key in _PEER_GRANT_FIELDS} for g in grants]

    def human() -> None:
        newest = "cert_serial (newest grant)" if "grants" in doc else "cert_serial"
        shown = {(newest if k == "cert_serial" else k): v for k, v in doc.items() if k != "grants"}
        fields(f"peer {doc['name']}", shown)
        if "grants" in doc:
            table(
                f"grants of peer {doc['name']} ({len(grants)}), each with its own certificate",
                ["id", "status", "cert serial", "activated", "revoked", "revoke reason"],
                [
                    (
                        g["id"],
                        g["status"],
                        g["cert_serial"] or "",
                        g["activated_at"] or "",
                        g["revoked_at"] or "",
                        g["revoke_reason"] or "",
                    )
                    for g in grants
                ],
            )

    emit(ctx, doc, human)


_PEER_GRANT_FIELDS = (
    "id",
    "status",
    "cert_serial",
    "subject_user_id",
    "activated_at",
    "expires_at",
    "revoked_at",
    "revoke_reason",
)


def _set_state(ctx: typer.Context, peer: str, target: str, reason: str, done: str) -> None:
    request = grants_pb2.SetPeerStateRequest(
        id=peer, state=grants_pb2.PeerState.Value("PEER_STATE_" + target.upper()), reason=reason
    )
    config = load_or_fail(ctx, state(ctx).home)
    try:
        reply: Any = call_admin(
            ctx,
            config,
            lambda stub, md: stub.SetPeerState(request, metadata=md),
            if_interrupted=f"the peer may have been {done}: check "
            f"`mosaic federation peer show {peer}`",
            done_if=f"PEER_ALREADY_{target.upper()}",
        )
    except AlreadyDone:  # what was asked holds already: success, as for a repeated revoke
        done = f"was {target} already: nothing to do"
        get = grants_pb2.GetPeerRequest(id=peer)
        reply = call_admin(ctx, config, lambda stub, md: stub.GetPeer(get, metadata=md))
    doc = peer_doc(reply.peer)
    emit(ctx, doc, lambda: fields(f"peer {doc['name']} {done}", doc))


@peer_app.command("suspend")
def peer_suspend(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the peer).")] = "",
) -> None:
    """Suspend an active peer: its requests are refused until it is resumed."""
    _set_state(ctx, peer, "suspended", reason, "suspended")


@peer_app.command("resume")
def peer_resume(ctx: typer.Context, peer: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Resume a suspended peer."""
    _set_state(ctx, peer, "active", "", "resumed")


@peer_app.command("remove")
def peer_remove(ctx: typer.Context, peer: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Delete a peer and every grant it holds."""
    request = grants_pb2.RemovePeerRequest(id=peer)
    config = load_or_fail(ctx, state(ctx).home)
    reply = call_admin(
        ctx,
        config,
        lambda stub, md: stub.RemovePeer(request, metadata=md),
        if_interrupted="the peer may have been removed: check `mosaic federation peer list`",
    )
    doc = {"peer": peer_doc(reply.peer), "removed_grant_ids": list(reply.removed_grant_ids)}

    def human() -> None:
        typer.echo(
            f"removed peer {reply.peer.name} ({reply.peer.id}) and "
            f"{len(reply.removed_grant_ids)} grant(s)"
        )
        for grant_id in reply.removed_grant_ids:
            typer.echo(f"  - {grant_id}")

    emit(ctx, doc, human)
