"""The command groups every command module registers on.

They live apart from ``main`` so that a command module can import them without
importing ``main`` (which imports every command module).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mosaic",
    help="Mosaic Federation: scoped, audited, real-time access between self-hosted gateways.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
gateway_app = typer.Typer(help="Operate this gateway.", no_args_is_help=True)
