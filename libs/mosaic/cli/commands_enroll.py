"""`mosaic federation grant token` (serving side), `peer add` and `peer renew` (querying side)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from mosaic.cli.admin import call_admin, load_or_fail
from mosaic.cli.commands_grants import _uuid_arg, iso, peer_doc
from mosaic.cli.federation import grant_app, peer_app
from mosaic.cli.output import EXIT_USAGE, console, emit, fail, fields, state
from mosaic.enrollment_url import MAX_URL_LENGTH, EnrollmentURLError, parse_enrollment_url
from mosaic.federation.v1 import enrollment_pb2, gateway_pb2

# The admin call of `peer add` waits for the other gateway (TLS probe, CA issuance).
ADD_PEER_TIMEOUT_S = 90.0
CREATE_TOKEN_TIMEOUT_S = 20.0
# `peer renew` waits for the other gateway (its CA issues) and for grants-service.
RENEW_PEER_TIMEOUT_S = 90.0


@grant_app.command("token")
def grant_token(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(metavar="ID", help="A pending grant.")],
    ttl: Annotated[int, typer.Option("--ttl", help="Seconds the token stays valid (1-900).")] = 900,
) -> None:
    """Make a single-use enrollment URL for a pending grant (hand it to the peer's admin)."""
    if ttl < 1 or ttl > 900:
        fail(
            ctx,
            "USAGE",
            f"--ttl must be between 1 and 900 seconds, got {ttl}",
            "pass --ttl 1 to 900 (default 900, 15 minutes): a token that lives longer is a "
            "risk; make a new one when it expires",
            exit_code=EXIT_USAGE,
        )
    grant_id = _uuid_arg(ctx, "ID", grant_id)
    config = load_or_fail(ctx, state(ctx).home)
    request = enrollment_pb2.CreateTokenRequest(grant_id=grant_id, ttl_seconds=ttl)
    reply = call_admin(
        ctx,
        config,
        lambda stub, md: stub.CreateToken(request, metadata=md, timeout=CREATE_TOKEN_TIMEOUT_S),
        if_interrupted="a token may have been made; it was never shown and expires by itself: "
        f"run `mosaic federation grant token {grant_id}` again",
    )
    doc: dict[str, Any] = {
        "token": reply.token,
        "enrollment_url": reply.enrollment_url,
        "expires_at": iso(reply.expires_at, reply.HasField("expires_at")),
        "grant_id": reply.grant_id,
        "peer_id": reply.peer_id,
    }

    def human() -> None:
        console.print("enrollment URL for grant " + reply.grant_id + ":", highlight=False)
        console.print()
        console.print(reply.enrollment_url, soft_wrap=True, highlight=False, markup=False)
        console.print()
        console.print(
            f"[yellow]This URL is a secret.[/] It can be used once, until {doc['expires_at']}. "
            "Send it to the other gateway's administrator over a private channel; they save "
            "it to a file and run `mosaic federation peer add - < url.txt` (from standard "
            "input, the token stays out of the process list and the shell history).",
            highlight=False,
        )

    emit(ctx, doc, human)


@peer_app.command("add")
def peer_add(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Argument(
            metavar="URL",
            help="The enrollment URL (mosaic-enroll://…), or - to read it from standard input "
            "(keeps its token out of the process list and the shell history).",
        ),
    ],
    name: Annotated[
        str, typer.Option("--name", help="Local name for the peer (default: its host).")
    ] = "",
) -> None:
    """Enroll with a gateway that granted us access: pin its CA, redeem, store the peer."""
    if url == "-":
        url = sys.stdin.readline(MAX_URL_LENGTH + 1).strip()
        if not url:
            fail(
                ctx,
                "ENROLLMENT_URL_INVALID",
                "no enrollment URL on standard input",
                "pipe the URL in, e.g. `mosaic federation peer add - < url.txt`",
            )
    try:
        parse_enrollment_url(url)
    except EnrollmentURLError as exc:
        fail(
            ctx,
            "ENROLLMENT_URL_INVALID",
            str(exc),
            "paste the URL exactly as `mosaic federation grant token` printed it",
        )
    config = load_or_fail(ctx, state(ctx).home)
    request = gateway_pb2.AddPeerRequest(enrollment_url=url.strip(), name=name)
    reply = call_admin(
        ctx,
        config,
        lambda stub, md: stub.AddPeer(request, metadata=md, timeout=ADD_PEER_TIMEOUT_S),
        if_interrupted="the gateway may still finish adding the peer (for up to 90 s): check "
        "`mosaic federation peer list` before you run peer add again (the URL's token may "
        "be spent already)",
    )
    doc = peer_doc(reply.peer)
    emit(ctx, doc, lambda: fields(f"peer {doc['name']} added", doc))


@peer_app.command("renew")
def peer_renew(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(metavar="ID", help="A peer we query (id or name).")],
) -> None:
    """Renew our certificate for a peer we query, over mTLS, for the same grant."""
    config = load_or_fail(ctx, state(ctx).home)
    request = gateway_pb2.RenewPeerRequest(id=peer)
    reply = call_admin(
        ctx,
        config,
        lambda stub, md: stub.RenewPeer(request, metadata=md, timeout=RENEW_PEER_TIMEOUT_S),
        error_metadata=("server_reason", "request_id"),
        if_interrupted="the gateway may still finish the renewal (for up to 90 s): check the "
        f"peer's cert_serial with `mosaic federation peer show {peer}` before you renew again",
    )
    doc = peer_doc(reply.peer)
    emit(ctx, doc, lambda: fields(f"peer {doc['name']} renewed", doc))
