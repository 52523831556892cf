"""The command groups every command module registers on.

They live apart from ``main`` so that a command module can import them without
importing ``main`` (which imports every command module).
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from mosaic.cli.output import CliState, interrupted


class MosaicGroup(TyperGroup):
    """The root command: Ctrl-C in any command is reported like any other failure (one
    JSON document with --json, else an error line), exit 130, instead of a silent exit.
    Commands that stop work of their own on Ctrl-C (`up`, `demo`) handle it themselves."""

    def invoke(self, ctx: Any) -> Any:  # a typer.Context (typed as Typer's vendored click's)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if not isinstance(ctx.obj, CliState):  # before the root callback ran
                ctx.obj = CliState(home=None, json="--json" in sys.argv[1:])
            interrupted(ctx)


app = typer.Typer(
    cls=MosaicGroup,
    name="mosaic",
    help="Mosaic Federation: scoped, audited, real-time access between self-hosted gateways.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
gateway_app = typer.Typer(help="Operate this gateway.", no_args_is_help=True)
