"""`mosaic demo`: two gateways on loopback and the whole federation flow, step by step.

Every step runs the real CLI against real process trees and checks what it got;
the demo exits 0 only if every step behaved as expected.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mosaic.cli.apps import app
from mosaic.cli.output import state
from mosaic.config import ConfigError, find_free_port_base
from mosaic.metrics import samples, scrape

# Packaged with the CLI (an installed image has no infra/); infra/demo links to it.
SAMPLE_DATA = Path(__file__).resolve().parent / "sample-resources.json"
ALICE = "5b0c3a8e-6f2d-4e1a-9c7b-1d2e3f4a5b6c"
BOB_ROW = "bob-tasks-001"
TEAM_PLATFORM = "3f6c1a2b-8d4e-4f5a-9b6c-7d8e9f0a1b2c"
ROW_CAP = 3

console = Console(width=None if sys.stdout.isatty() else 120, highlight=False)


class DemoFailed(Exception):
    pass


@dataclass
class Gateway:
    label: str
    home: Path
    port_base: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    docs: dict[str, Any] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 60, stdin: str | None = None) -> tuple[int, Any]:
        argv = [sys.executable, "-m", "mosaic.cli", "--home", str(self.home), "--json", *args]
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        try:
            doc: Any = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            doc = {"raw": proc.stdout.strip(), "stderr": proc.stderr.strip()[-500:]}
        return proc.returncode, doc

    def start(self) -> None:
        # A Ctrl-C between the fork and the assignment would leave a tree no one stops
        # (it runs in a session of its own): hold it until self.proc is set.
        held: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mosaic.cli", "--home", str(self.home), "up"],
                stdout=self.log.open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        if held:
            raise KeyboardInterrupt

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            # Too slow, or a second Ctrl-C while stopping: never leave the tree running
            # (it is in a session of its own, out of reach of the terminal's signals).
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None


class Steps:
    def __init__(self) -> None:
        self.n = 0
        self.started = time.monotonic()
        self.done: list[dict[str, Any]] = []  # for --json

    def run(self, who: str, title: str, action: Callable[[], str]) -> None:
        self.n += 1
        began = time.monotonic()
        try:
            detail = action()
        except DemoFailed as exc:
            self.done.append(
                {"step": self.n, "who": who, "title": title, "ok": False, "detail": str(exc)}
            )
            console.print(
                f"[bold red]✗ {self.n:02d}[/] [cyan]{who:<3}[/] {title}: [red]{escape(str(exc))}[/]"
            )
            raise
        took = time.monotonic() - began
        self.done.append(
            {
                "step": self.n,
                "who": who,
                "title": title,
                "ok": True,
                "detail": detail,
                "seconds": round(took, 3),
            }
        )
        console.print(
            f"[bold green]✓ {self.n:02d}[/] [cyan]{who:<3}[/] {title}"
            + (f" [dim]— {escape(detail)}[/]" if detail else "")
            + f" [dim]({took:.1f}s)[/]"
        )


def _port_base() -> int:
    try:
        return find_free_port_base()
    except ConfigError as exc:
        raise DemoFailed(exc.message) from None


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise DemoFailed(message)


def _ok(gw: Gateway, *args: str, stdin: str | None = None) -> Any:
    code, doc = gw.run(*args, stdin=stdin)
    if code != 0:
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        raise DemoFailed(f"`mosaic {' '.join(args)}` failed: {json.dumps(err)[:400]}")
    return doc


def _refused(gw: Gateway, *args: str) -> dict[str, Any]:
    code, doc = gw.run(*args)
    _expect(
        code == 1 and isinstance(doc, dict) and "error" in doc,
        f"`mosaic {' '.join(args)}` should have been refused, got exit {code}: {doc}",
    )
    return dict(doc["error"])


def _items_table(title: str, items: list[dict[str, Any]]) -> None:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("id", "resource", "team", "title"):
        table.add_column(column)
    for item in items:
        team = "platform" if item.get("team_id") == TEAM_PLATFORM else (item.get("team_id") or "-")
        table.add_row(item["id"], item["resource"], team, item["title"])
    console.print(table)


def run_demo(workdir: Path, steps: Steps) -> None:
    b = Gateway("B", workdir / "b", _port_base(), workdir / "b-up.log")
    a = Gateway("A", workdir / "a", _port_base(), workdir / "a-up.log")
    state: dict[str, Any] = {}
    try:
        for gw, name in ((b, "gateway-b"), (a, "gateway-a")):
            steps.run(gw.label, "mosaic init", functools.partial(_init, gw, name))
        for gw in (b, a):
            steps.run(gw.label, "mosaic up (five services)", functools.partial(_up, gw))
        steps.run(
            "B",
            "import sample data into the reference resource-service",
            lambda: f"{_ok(b, 'resources', 'import', str(SAMPLE_DATA))['imported']} rows",
        )
        scope_file = workdir / "scope.json"
        scope_file.write_text(
            json.dumps(
                {
                    "resources": ["tasks", "notes"],
                    "filters": {
                        r: {"include_teams": [TEAM_PLATFORM], "include_personal": False}
                        for r in ("tasks", "notes")
                    },
                    "max_rows_per_query": ROW_CAP,
                }
            )
        )

        def grant() -> str:
            doc = _ok(
                b,
                "federation",
                "grant",
                "create",
                "--user",
                ALICE,
                "--peer-name",
                "gateway-a",
                "--scope",
                str(scope_file),
            )
            g = doc.get("grant", doc)
            _expect(g["status"] == "pending", f"grant status {g['status']}")
            state["grant"] = g["id"]
            return f"grant {g['id'][:8]}… pending: tasks+notes, team platform, cap {ROW_CAP}"

        steps.run("B", "grant gateway-a read access", grant)

        def token() -> str:
            doc = _ok(b, "federation", "grant", "token", state["grant"], "--ttl", "300")
            state["url"] = doc["enrollment_url"]
            return f"single-use, expires {doc['expires_at']}, pins B's CA root"

        steps.run("B", "issue an enrollment token", token)

        def enroll() -> str:
            # The URL on standard input: its token stays off the process list.
            doc = _ok(
                a, "federation", "peer", "add", "-", "--name", "gateway-b", stdin=state["url"]
            )
            peer = doc.get("peer", doc)
            _expect(peer["state"] == "active", f"peer state {peer['state']}")
            state["peer"] = peer["name"]
            return f"peer {peer['name']} active, cert serial {peer['cert_serial'][:12]}…"

        steps.run("A", "enroll with B (peer add)", enroll)

        def grant_active() -> str:
            doc = _ok(b, "federation", "grant", "show", state["grant"])
            g = doc.get("grant", doc)
            _expect(g["status"] == "active", f"grant status {g['status']}")
            return "grant is now active"

        steps.run("B", "grant became active", grant_active)

        def capabilities() -> str:
            doc = _ok(a, "federation", "query", state["peer"], "capabilities")
            caps = doc.get("capabilities", doc)
            _expect(sorted(caps["resources"]) == ["notes", "tasks"], f"resources {caps}")
            return f"resources {caps['resources']}, cap {caps['max_rows_per_query']}"

        steps.run("A", "query capabilities", capabilities)

        def list_all() -> str:
            seen: list[dict[str, Any]] = []
            page = ""
            pages = 0
            while True:
                args = ["federation", "query", state["peer"], "list", "tasks", "--limit", "10"]
                doc = _ok(a, *args, *(["--page-token", page] if page else []))
                pages += 1
                _expect(len(doc["items"]) <= ROW_CAP, "page larger than the row cap")
                seen += doc["items"]
                page = doc.get("next_page_token") or ""
                if not page:
                    break
            _expect(
                all(i["owner_user_id"] == ALICE and i["team_id"] == TEAM_PLATFORM for i in seen),
                "a row outside the scope was returned",
            )
            _expect(len({i["id"] for i in seen}) == len(seen), "a row came twice")
            state["first"] = seen[0]["id"]
            _items_table(f"alice's platform tasks, {pages} pages of ≤ {ROW_CAP}", seen)
            return f"{len(seen)} rows in {pages} pages, each row once"

        steps.run("A", "list tasks (paged at the row cap)", list_all)

        def get_one() -> str:
            doc = _ok(a, "federation", "query", state["peer"], "get", "tasks", state["first"])
            _expect(len(doc["items"]) == 1, f"got {doc}")
            return f'"{doc["items"][0]["title"]}", request id {doc["request_id"][:12]}'

        steps.run("A", "get one task", get_one)

        def search() -> str:
            doc = _ok(a, "federation", "query", state["peer"], "search", "notes", "certificate")
            _expect(len(doc["items"]) >= 1, "nothing found for a word in an in-scope note")
            _expect(all(i["team_id"] == TEAM_PLATFORM for i in doc["items"]), "row out of scope")
            return f"'certificate': {len(doc['items'])} matching note(s), all in scope"

        steps.run("A", "search notes", search)

        def renew() -> str:
            before = _ok(a, "federation", "peer", "show", state["peer"])
            before = before.get("peer", before)
            doc = _ok(a, "federation", "peer", "renew", state["peer"])
            after = doc.get("peer", doc)
            _expect(after["cert_serial"] != before["cert_serial"], "serial did not change")
            _ok(a, "federation", "query", state["peer"], "capabilities")
            return f"new serial {after['cert_serial'][:12]}…, old one revoked; queries still work"

        steps.run("A", "renew the client certificate over mTLS", renew)

        def out_of_scope() -> str:
            err = _refused(a, "federation", "query", state["peer"], "list", "memory")
            _expect(err["code"] in ("FORBIDDEN", "RESOURCE_NOT_GRANTED"), f"got {err}")
            err2 = _refused(a, "federation", "query", state["peer"], "get", "tasks", BOB_ROW)
            _expect("NOT_FOUND" in err2["code"], f"got {err2}")
            return f"memory → {err['code']}; bob's task → {err2['code']} (no existence oracle)"

        steps.run("A", "out-of-scope requests are refused", out_of_scope)

        def audit() -> str:
            doc = _ok(b, "federation", "audit", "list", "--limit", "20")
            entries = doc.get("entries", doc)
            table = Table(title="B's audit log (newest first)", title_justify="left")
            for column in ("time", "verb", "resource", "outcome", "status", "request id"):
                table.add_column(column)
            for e in entries[:12]:
                table.add_row(
                    str(e.get("created_at", ""))[11:19],
                    e.get("verb", ""),
                    e.get("resource") or "",
                    e.get("outcome", ""),
                    e.get("status", ""),
                    (e.get("request_id") or "")[:12],
                )
            console.print(table)
            outcomes = {e.get("outcome") for e in entries}
            _expect({"allowed", "denied"} <= outcomes, f"audit outcomes {outcomes}")
            return f"{len(entries)} rows, allowed and denied alike"

        steps.run("B", "read the audit log", audit)

        def metrics() -> str:
            port = b.docs["init"]["ports"]["metrics"]["federation-gateway"]
            counted: dict[str, float] = {}
            for sample in samples(scrape(port)):
                if sample.name == "mosaic_audit_rows_total":
                    outcome = sample.labels["outcome"]
                    counted[outcome] = counted.get(outcome, 0.0) + sample.value
            every = _ok(b, "federation", "audit", "list", "--limit", "1000")
            logged: dict[str, float] = {}
            for e in every.get("entries", every):
                logged[e["outcome"]] = logged.get(e["outcome"], 0.0) + 1
            _expect(counted == logged, f"metrics {counted} but audit log {logged}")
            parts = ", ".join(f"{int(n)} {o}" for o, n in sorted(counted.items()))
            return f"audit rows by outcome match the log ({parts})"

        steps.run("B", "scrape the gateway's metrics", metrics)
        steps.run(
            "B",
            "revoke the grant",
            lambda: (
                _ok(b, "federation", "grant", "revoke", state["grant"], "--reason", "demo over")
                .get("grant", {})
                .get("status", "revoked")
            ),
        )

        def after_revoke() -> str:
            err = _refused(a, "federation", "query", state["peer"], "list", "tasks")
            return f"refused: {err['code']}"

        steps.run("A", "next query after revocation", after_revoke)
        for gw in (a, b):
            steps.run(gw.label, "shut down (SIGTERM)", functools.partial(_down, gw))
    finally:
        for gw in (a, b):
            gw.stop()
    console.print(
        f"[bold green]demo complete[/] in {time.monotonic() - steps.started:.1f}s ({steps.n} steps)"
    )


def _init(gw: Gateway, name: str) -> str:
    doc = _ok(gw, "init", "--name", name, "--port-base", str(gw.port_base))
    gw.docs["init"] = doc
    return f"{doc['federation_endpoint']}, CA root {doc['federation_root_sha256'][:16]}…"


def _up(gw: Gateway) -> str:
    gw.start()
    code, doc = gw.run("gateway", "doctor", "--wait", "40", timeout=90)
    _expect(code == 0, f"doctor not ok; see {gw.log}")
    return f"doctor ok ({len(doc['checks'])} checks)"


def _down(gw: Gateway) -> str:
    code = gw.stop()
    _expect(code == 0, f"exit code {code}; see {gw.log}")
    return "every service stopped cleanly"


@app.command()
def demo(
    ctx: typer.Context,
    keep: Annotated[bool, typer.Option(help="Keep the demo's homes and logs afterwards.")] = False,
) -> None:
    """Two gateways on loopback and the whole flow, with readable output.

    With --json the steps still show on stderr, and stdout gets one document: ok, steps
    (each step, who, title, ok, detail, and seconds when it passed), seconds and workdir
    (kept only on failure or with --keep).
    """
    global console
    json_out = state(ctx).json
    if json_out:
        console = Console(stderr=True, highlight=False)
    workdir = Path(tempfile.mkdtemp(prefix="mosaic-demo-"))
    console.print(f"[bold]Mosaic Federation demo[/] — working in {workdir}")
    steps = Steps()

    def finish(ok: bool, code: int, error: str = "") -> None:
        if json_out:
            doc: dict[str, Any] = {
                "ok": ok,
                "steps": steps.done,
                "seconds": round(time.monotonic() - steps.started, 3),
                "workdir": str(workdir),
            }
            if error:
                doc["error"] = {
                    "code": "DEMO_FAILED",
                    "message": error,
                    "remediation": f"read the logs in {workdir}",
                }
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        if code:
            raise typer.Exit(code)

    try:
        run_demo(workdir, steps)
    except DemoFailed as exc:
        console.print(f"[red]demo failed[/]; homes and logs kept in {workdir}")
        finish(False, 1, str(exc))
    except KeyboardInterrupt:
        # The gateways are stopped (run_demo's finally); their homes hold throw-away keys.
        console.print("[yellow]demo interrupted[/]; both gateways stopped")
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        finish(False, 130, "interrupted")
    except Exception as exc:  # a timeout, an unexpected answer: say so, keep the logs
        console.print(f"[red]demo failed: {escape(f'{type(exc).__name__}: {exc}')}[/]")
        console.print(f"homes and logs kept in {workdir}")
        finish(False, 1, f"{type(exc).__name__}: {exc}")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    finish(True, 0)
