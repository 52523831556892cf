"""Bad command lines and broken homes get the CLI contract's error, never a traceback:
with --json one ``{"error": ...}`` document on stdout, exit 2 for bad usage, 1 otherwise
(DESIGN.md "CLI contract"). An initialised instance, not started: every case here fails
before anything is dialled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaic.config import load_config
from tests.support.instances import Instance, cli


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield Instance(tmp_path_factory.mktemp("cli-input"), "b").home


@pytest.mark.parametrize(
    "args",
    [
        ("federation", "audit", "list", "--limit", "abc"),
        ("federation", "audit", "list", "--no-such-option"),
        ("federation", "no-such-command"),
        ("federation", "query"),
    ],
    ids=["wrong-type", "unknown-option", "unknown-command", "missing-argument"],
)
def test_parser_errors_are_one_json_document_and_exit_2(home: Path, args: tuple[str, ...]) -> None:
    code, doc, err = cli(home, *args)
    assert code == 2, (doc, err)
    assert isinstance(doc, dict), doc  # parsed from stdout: one JSON document
    assert doc["error"]["code"] == "USAGE"
    assert doc["error"]["message"]
    assert "Traceback" not in err


@pytest.mark.parametrize("limit", ["-1", "3000000000"])
@pytest.mark.parametrize("verb", [("list", "tasks"), ("search", "tasks", "alpha")])
def test_a_query_limit_outside_int32_is_bad_usage(
    home: Path, verb: tuple[str, ...], limit: str
) -> None:
    """The request's limit field is an int32: a larger --limit must not end in a
    traceback (the peer caps any limit at the grant's row cap anyway)."""
    code, doc, err = cli(home, "federation", "query", "b", *verb, "--limit", limit)
    assert code == 2, (doc, err)
    assert doc["error"]["code"] == "USAGE"
    assert "--limit must be between 0 and 2147483647" in doc["error"]["message"]
    assert "Traceback" not in err


def test_parser_errors_without_json_keep_the_usage_help(home: Path) -> None:
    code, out, err = cli(home, "federation", "audit", "list", "--limit", "abc", json_out=False)
    assert code == 2
    assert out == ""
    assert "Usage:" in err and "--limit" in err


@pytest.mark.parametrize(
    "since", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "yesterday"]
)
def test_a_since_outside_the_representable_range_is_bad_usage(home: Path, since: str) -> None:
    code, doc, err = cli(home, "federation", "audit", "list", "--since", since)
    assert code == 2, (doc, err)
    assert doc["error"]["code"] == "USAGE"
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "expires_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "tomorrow"]
)
def test_an_expiry_outside_the_representable_range_is_bad_usage(
    home: Path, tmp_path: Path, expires_at: str
) -> None:
    """Years 1 and 9999 in a time zone that puts them outside 1-9999 in UTC used to end in
    an OverflowError traceback."""
    scope = tmp_path / "scope.json"
    scope.write_text(json.dumps({"resources": ["tasks"]}))
    user = "5b0c3a8e-6f2d-4e1a-9c7b-1d2e3f4a5b6c"
    create = ("federation", "grant", "create", "--user", user, "--peer-name", "p")
    code, doc, err = cli(home, *create, "--scope", str(scope), "--expires-at", expires_at)
    assert code == 2, (doc, err)
    assert doc["error"]["code"] == "USAGE"
    assert "--expires-at" in doc["error"]["message"]
    assert "Traceback" not in err


def test_an_unreadable_admin_token_is_a_config_error(home: Path) -> None:
    token = load_config(home).admin_token_file
    moved = token.with_name(token.name + ".away")
    token.rename(moved)
    try:
        code, doc, err = cli(home, "federation", "audit", "list")
    finally:
        moved.rename(token)
    assert code == 1, (doc, err)
    assert doc["error"]["code"] == "CONFIG"
    assert str(token) in doc["error"]["message"]
    assert doc["error"]["remediation"]
    assert "Traceback" not in err


def test_deeply_nested_json_is_an_invalid_file(home: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text("[" * 100_000 + "]" * 100_000)
    code, doc, err = cli(home, "resources", "import", str(rows))
    assert code == 1, (doc, err)
    assert doc["error"]["code"] == "INVALID_FILE"
    assert "Traceback" not in err


def test_text_that_is_not_unicode_is_an_invalid_row(home: Path, tmp_path: Path) -> None:
    """JSON may carry a lone surrogate ("\\ud800"); no store can hold it, so the row is
    refused with the others, and nothing is imported."""
    rows = tmp_path / "rows.json"
    rows.write_text(
        '[{"id": "r1", "resource": "tasks", "owner_user_id": '
        '"5b0c3a8e-6f2d-4e1a-9c7b-1d2e3f4a5b6c", "title": "a \\ud800 b", "body": "x"}]'
    )
    code, doc, err = cli(home, "resources", "import", str(rows))
    assert code == 1, (doc, err)
    assert doc["error"]["code"] == "INVALID_ITEMS"
    assert doc["error"]["violations"] == ["items[0].title: not valid Unicode text"]
    assert "Traceback" not in err


def test_terminal_controls_and_markup_in_an_error_are_shown_not_obeyed(
    home: Path, tmp_path: Path
) -> None:
    """The human error view prints what it is given as text: a file name holding rich
    markup (a name cannot hold the "[/]" that made it crash) and escape sequences (set
    the title, clear the screen, a one-byte CSI) is shown with markup intact and each
    control character as \\xNN; --json keeps the exact name."""
    name = "[red]rows [link=https:evil.example]x \x1b]0;owned\x07\x1b[2J\x9b31m.json"
    missing = tmp_path / name
    code, out, err = cli(home, "resources", "import", str(missing), json_out=False)
    assert code == 2, (out, err)  # a missing FILE is bad usage
    assert "Traceback" not in err
    assert not {"\x1b", "\x07", "\x9b"} & set(err), repr(err)
    shown = "".join(err.split())  # the console wraps long lines
    assert "".join(f"{tmp_path}/".split()) in shown
    assert "[red]rows[link=https:evil.example]x\\x1b]0;owned\\x07\\x1b[2J\\x9b31m" in shown

    code, doc, err = cli(home, "resources", "import", str(missing))
    assert code == 2, (doc, err)  # a missing FILE is bad usage
    assert str(missing) in doc["error"]["message"]


def test_bidi_and_invisible_characters_in_an_error_are_shown_escaped(
    home: Path, tmp_path: Path
) -> None:
    """A right-to-left override makes "rows\\u202enosj.exe" read "rowsexe.json" on a
    terminal, and zero-width characters hide text: the human error view writes each as
    its escape, in stored order; --json keeps the exact name."""
    name = "rows\u202enosj.exe\u2066\u200b\ufeff\u2028x"
    missing = tmp_path / name
    code, out, err = cli(home, "resources", "import", str(missing), json_out=False)
    assert code == 2, (out, err)  # a missing FILE is bad usage
    assert not set("\u202e\u2066\u200b\ufeff\u2028") & set(err), repr(err)
    assert "rows\\u202enosj.exe\\u2066\\u200b\\ufeff\\u2028x" in "".join(err.split())

    code, doc, err = cli(home, "resources", "import", str(missing))
    assert code == 2, (doc, err)  # a missing FILE is bad usage
    assert str(missing) in doc["error"]["message"]


def test_an_error_stays_on_its_line_and_shows_default_ignorable_characters(
    home: Path, tmp_path: Path
) -> None:
    """A line feed in text echoed in an error (a file name here, a peer's message
    elsewhere) could print a forged "what to do" line; variation selectors and Hangul
    fillers show as nothing and can hide text after a visible one. Each is escaped."""
    name = "rows\nwhat to do run this\ufe01\U000e0101\u3164\u034fx"
    missing = tmp_path / name
    code, out, err = cli(home, "resources", "import", str(missing), json_out=False)
    assert code == 2, (out, err)  # a missing FILE is bad usage
    assert not {line for line in err.splitlines() if line.startswith("what to do run this")}
    assert not set("\ufe01\U000e0101\u3164\u034f") & set(err), repr(err)
    escaped = "rows\\x0awhat to do run this\\ufe01\\U000e0101\\u3164\\u034fx"
    assert "".join(escaped.split()) in "".join(err.split())  # the console wraps lines

    code, doc, err = cli(home, "resources", "import", str(missing))
    assert code == 2, (doc, err)  # a missing FILE is bad usage
    assert str(missing) in doc["error"]["message"]


def test_an_unknown_key_is_named_cut_short_and_quoted(home: Path, tmp_path: Path) -> None:
    """A 1 MB unknown key used to be echoed whole in the error (and an escape sequence in
    a key went out raw); it is named as the scope checker names keys: cut to 64
    characters, JSON-quoted."""
    row = {
        "id": "r1",
        "resource": "tasks",
        "owner_user_id": "5b0c3a8e-6f2d-4e1a-9c7b-1d2e3f4a5b6c",
        "title": "t",
        "body": "b",
    }
    huge, escape = "k" * 1_000_000, "x\x1b[2J"
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{**row, huge: 1, escape: 2, "colour": 3}]))
    code, doc, err = cli(home, "resources", "import", str(rows))
    assert code == 1, (doc, err)
    assert doc["error"]["code"] == "INVALID_ITEMS"
    assert sorted(doc["error"]["violations"]) == sorted(
        [
            f'items[0]["{"k" * 64}..."]: unknown field',
            'items[0]["x\\u001b[2J"]: unknown field',
            "items[0].colour: unknown field",
        ]
    )
    code, _, err = cli(home, "resources", "import", str(rows), json_out=False)
    assert code == 1 and len(err) < 2000, err[:2000]


def test_a_scope_file_larger_than_a_scope_is_bad_usage(home: Path, tmp_path: Path) -> None:
    """The scope file was read whole, however large (`--scope /dev/zero` never ended); now
    at most 1 MiB is read, and a larger file is bad usage before anything is sent."""
    scope = tmp_path / "scope.json"
    scope.write_text('{"resources": ["tasks"]}' + " " * (1024 * 1024))
    user = "5b0c3a8e-6f2d-4e1a-9c7b-1d2e3f4a5b6c"
    code, doc, err = cli(
        home, "federation", "grant", "create", "--user", user, "--peer-name", "p",
        "--scope", str(scope),
    )  # fmt: skip
    assert code == 2, (doc, err)
    assert doc["error"]["code"] == "USAGE"
    assert "larger than 1 MiB" in doc["error"]["message"]


def test_a_file_that_cannot_be_read_is_bad_usage_for_import_and_scope(
    home: Path, tmp_path: Path
) -> None:
    """A missing scope file was USAGE (exit 2) and a missing import file INVALID_FILE
    (exit 1). Both name no readable file on the command line: bad usage, exit 2, with a
    remediation; what a readable file holds is checked by the operation (exit 1)."""
    missing = str(tmp_path / "missing.json")
    user = "5b0c3a8e-6f2d-4e1a-9c7b-1d2e3f4a5b6c"
    for args in (
        ("resources", "import", missing),
        ("federation", "grant", "create", "--user", user, "--peer-name", "p", "--scope", missing),
    ):
        code, doc, err = cli(home, *args)
        assert code == 2, (args, doc, err)
        assert doc["error"]["code"] == "USAGE"
        assert f"cannot read {missing}" in doc["error"]["message"] or (
            f"cannot read scope file {missing}" in doc["error"]["message"]
        )
        assert doc["error"]["remediation"]
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"resources": ["t\xe4sks"]}')
    for args, reason in (
        (("resources", "import", str(latin1)), "INVALID_FILE"),
        (("federation", "grant", "create", "--user", user, "--peer-name", "p", "--scope",
          str(latin1)), "SCOPE_INVALID"),
    ):  # fmt: skip
        code, doc, err = cli(home, *args)
        assert code == 1, (args, doc, err)
        assert doc["error"]["code"] == reason


@pytest.mark.parametrize(
    "args",
    [
        ("federation", "audit", "list", "--limit", "0"),
        ("federation", "grant", "token", "3f2a1c9e-8b10-4f7c-9d55-0d5e7b0e5c2a", "--ttl", "1000"),
    ],
    ids=["audit-limit", "token-ttl"],
)
def test_out_of_range_options_say_what_range_to_use(home: Path, args: tuple[str, ...]) -> None:
    """These refusals had no remediation (DESIGN: operator-facing errors add one)."""
    code, doc, err = cli(home, *args)
    assert code == 2, (doc, err)
    assert doc["error"]["code"] == "USAGE"
    assert "got " in doc["error"]["message"]
    assert doc["error"]["remediation"].startswith("pass --")
