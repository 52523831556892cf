"""The CLI's human view: ids stay whole on one line so they can be copied, and nested
values (a grant's scope, init's ports) read as lines, not as a JSON blob."""

from __future__ import annotations

import io
import uuid

import pytest
from rich.console import Console

from mosaic.cli import output


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> Console:
    console = Console(width=100, record=True, file=io.StringIO())
    monkeypatch.setattr(output, "console", console)
    return console


def test_id_columns_are_never_folded(narrow: Console) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    users = [str(uuid.uuid4()) for _ in range(2)]
    output.table(
        "grants (2)",
        ["id", "peer", "subject user", "status", "resources", "created", "expires"],
        [
            (g, "peer-a", u, "active", "notes, tasks", "2026-11-23T13:26:48.598532Z", "")
            for g, u in zip(ids, users, strict=True)
        ],
    )
    text = narrow.export_text()
    for value in ids + users:
        assert value in text, text  # whole, on one line


def test_nested_values_are_shown_as_lines_not_json(narrow: Console) -> None:
    team = str(uuid.uuid4())
    output.fields(
        "grant",
        {
            "scope": {
                "excluded_resources": [],
                "filters": {"tasks": {"include_personal": True, "include_teams": [team]}},
                "max_rows_per_query": 5,
                "resources": ["notes", "tasks"],
            },
            "ports": {"admin": 7440, "metrics": {"ca-service": 9465}},
        },
    )
    text = narrow.export_text()
    assert "{" not in text and '"' not in text, text
    assert "resources: notes, tasks" in text
    assert "excluded_resources: (none)" in text
    assert f"include_teams: {team}" in text
    assert "admin: 7440" in text and "ca-service: 9465" in text


def test_a_hostile_key_or_value_in_a_nested_document_is_still_escaped(narrow: Console) -> None:
    output.fields("x", {"scope": {"bad\x1b[2J": ["\u202eevil"]}})
    text = narrow.export_text()
    assert "\x1b" not in text and "\u202e" not in text
    assert "\\x1b[2J" in text and "\\u202eevil" in text
