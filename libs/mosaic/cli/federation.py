"""`mosaic federation …` command groups; each area registers its commands on these."""

from __future__ import annotations

import typer

federation_app = typer.Typer(help="Grants, peers, queries and audit.", no_args_is_help=True)
grant_app = typer.Typer(help="Grants this gateway gives to peers.", no_args_is_help=True)
peer_app = typer.Typer(help="Peers: gateways we serve and gateways we query.", no_args_is_help=True)
query_app = typer.Typer(help="Query a peer gateway we enrolled with.", no_args_is_help=True)
audit_app = typer.Typer(help="This gateway's audit log of peer requests.", no_args_is_help=True)

federation_app.add_typer(grant_app, name="grant")
federation_app.add_typer(peer_app, name="peer")
federation_app.add_typer(query_app, name="query")
federation_app.add_typer(audit_app, name="audit")
