"""Printing results: a human view by default, one JSON document with --json; exit codes 0/1/2.

The human view shows text that others wrote: a peer's rows, imported data, an operator's
reasons, servers' messages. None of it may steer the terminal or hide from the reader, so
every value is printed as plain text (never parsed as rich markup) with control and
invisible format characters (bidi overrides and isolates, zero-width characters) made
visible; the --json document carries the exact values (non-ASCII as JSON ``\\u`` escapes).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mosaic.text import escape_unshown

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C

# ctx.meta key (shared by every context of one command line): what an admin call in
# flight leaves to the gateway if the operator stops waiting (admin.call_admin sets it).
INTERRUPTED_ADVICE = "mosaic.interrupted_advice"

console = Console(width=None if sys.stdout.isatty() else 160)
# Errors are never wrapped, on a terminal or through a pipe (rich would cut them at 80
# columns there): each is one line, which a log or a `grep` keeps whole.
err_console = Console(stderr=True, soft_wrap=True)


def printable(value: object, *, line: bool = False) -> str:
    """``value`` as text a terminal only displays, in the order it is stored: each control
    character but tab and line feed (ESC, OSC and CSI sequences, carriage return, NUL) and
    each invisible format character (U+202E RIGHT-TO-LEFT OVERRIDE, U+2066-2069 isolates,
    U+200B-200F, U+FEFF, U+2028/2029) written as its escape, ``\\x1b`` or ``\\u202e``
    (mosaic.text.escape_unshown). ``line``: text that must stay on one line (an error, a
    token) has its line feeds and tabs escaped too."""
    return escape_unshown(str(value), line=line)


def plain(value: object, *, line: bool = False) -> Text:
    """``value`` for rich: :func:`printable`, and never read as markup."""
    return Text(printable(value, line=line))


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
        console.print(plain(document))


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
        # Each on one line: a line feed in a peer's message could forge a "what to do".
        err_console.print(
            Text.assemble(("error", "bold red"), " ", plain(f"{code}: {message}", line=True))
        )
        for key, value in (extra or {}).items():
            if isinstance(value, list):
                for item in value:
                    err_console.print(plain(f"  - {item}", line=True))
            else:
                err_console.print(plain(f"  {key}: {value}", line=True))
        if remediation:
            err_console.print(
                Text.assemble(("what to do", "yellow"), " ", plain(remediation, line=True))
            )
    raise typer.Exit(exit_code)


def interrupted(ctx: typer.Context) -> NoReturn:
    """Report Ctrl-C (exit 130) the way every other failure is reported. While an admin
    call was in flight, say so and what the gateway may still finish (its work goes on
    after the CLI stops waiting) and how to check."""
    advice = ctx.meta.get(INTERRUPTED_ADVICE)
    if advice is None:
        fail(ctx, "INTERRUPTED", "interrupted", "run the command again", exit_code=EXIT_INTERRUPTED)
    fail(
        ctx,
        "INTERRUPTED",
        "interrupted while waiting for the gateway",
        advice or "nothing was changed; run the command again",
        exit_code=EXIT_INTERRUPTED,
    )


# Columns holding ids, serials and request ids: shown whole on one line, never folded, so
# they can be copied into the next command. Other columns give way.
WHOLE_COLUMNS = frozenset(
    {"id", "request id", "peer id", "grant id", "subject user", "cert serial", "serial"}
)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table of ``rows``; every cell, the title and the headers printed as plain text.
    Columns named in WHOLE_COLUMNS are never wrapped or cut."""
    cells = [[plain("" if v is None else v) for v in row] for row in rows]
    t = Table(title=plain(title), title_justify="left", show_lines=False)
    for index, column in enumerate(columns):
        if column in WHOLE_COLUMNS:
            widest = max((c[index].cell_len for c in cells), default=0)
            t.add_column(plain(column), no_wrap=True, min_width=max(widest, len(column)))
        else:
            t.add_column(plain(column), overflow="fold")
    for row_cells in cells:
        t.add_row(*row_cells)
    console.print(t)


def fields(title: str, mapping: Mapping[str, Any]) -> None:
    """One record as ``field  value`` lines, as plain text; a dict value as indented
    ``key: value`` lines, a list of plain values comma-separated (see :func:`readable`)."""
    t = Table(title=plain(title), title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for key, value in mapping.items():
        t.add_row(plain(key), plain(readable(value)))
    console.print(t)


def readable(value: Any, indent: int = 0) -> str:
    """A value for a person rather than a parser: a dict as one ``key: value`` line per key
    (nested dicts indented below their key), a list of plain values as ``a, b``, an empty
    list as ``(none)``, None as an empty string. --json keeps the exact document."""
    if value is None:
        return ""
    if isinstance(value, dict):
        pad = "  " * indent
        lines = []
        for key, item in value.items():
            if isinstance(item, dict) and item:
                lines.append(f"{pad}{key}:\n{readable(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {readable(item, indent + 1)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "(none)"
        if all(not isinstance(v, (dict, list)) for v in value):
            return ", ".join(str(v) for v in value)
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
