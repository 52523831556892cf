"""Printing results: a human view by default, one JSON document with --json; exit codes 0/1/2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


@dataclass
class CliState:
    home: str | None
    json: bool


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


def emit(ctx: typer.Context, document: Any, human: Callable[[], None] | None = None) -> None:
    """Print ``document`` as JSON with --json, else call ``human`` (or print it plainly)."""
    if state(ctx).json:
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    elif human is not None:
        human()
    else:
        console.print(document)


def fail(
    ctx: typer.Context,
    code: str,
    message: str,
    remediation: str = "",
    *,
    exit_code: int = EXIT_FAILED,
    extra: Mapping[str, Any] | None = None,
) -> NoReturn:
    """Report a failure the --json way or the human way, then exit non-zero."""
    if state(ctx).json:
        error: dict[str, Any] = {"code": code, "message": message, "remediation": remediation}
        if extra:
            error.update(extra)
        sys.stdout.write(json.dumps({"error": error}, indent=2, default=str) + "\n")
    else:
        err_console.print(f"[bold red]error[/] {code}: {message}", highlight=False)
        for key, value in (extra or {}).items():
            if isinstance(value, list):
                for item in value:
                    err_console.print(f"  - {item}", highlight=False)
            else:
                err_console.print(f"  {key}: {value}", highlight=False)
        if remediation:
            err_console.print(f"[yellow]what to do[/] {remediation}", highlight=False)
    raise typer.Exit(exit_code)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    console.print(t)


def fields(title: str, mapping: Mapping[str, Any]) -> None:
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for key, value in mapping.items():
        t.add_row(
            key,
            ""
            if value is None
            else (json.dumps(value) if isinstance(value, (dict, list)) else str(value)),
        )
    console.print(t)
