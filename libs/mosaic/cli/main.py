"""`mosaic`: set up an instance, run its services, administer federation."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import grpc
import typer

from mosaic.cli.admin import load_or_fail, service_channel
from mosaic.cli.apps import app, gateway_app
from mosaic.cli.commands_resources import resources_app
from mosaic.cli.commands_seal import seal_app
from mosaic.cli.federation import federation_app
from mosaic.cli.home_lock import (
    LOCK_FILE,
    RENEW_LOCK_FILE,
    HomeBusy,
    lock_home,
    process_exists,
    running_holder,
)
from mosaic.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliState,
    emit,
    fail,
    readable,
    state,
    table,
)
from mosaic.cli.supervise import (
    CRASH_WINDOW_S,
    MAX_EXITS_IN_WINDOW,
    ExitHistory,
    StartReport,
    describe_exit,
    exit_text,
)
from mosaic.config import (
    DEFAULT_PORT_BASE,
    SERVICES,
    START_ORDER,
    ConfigError,
    InstanceConfig,
    StepCAConfig,
    resolve_home,
)
from mosaic.federation.v1 import common_pb2, common_pb2_grpc

app.add_typer(gateway_app, name="gateway")
app.add_typer(federation_app, name="federation")
app.add_typer(seal_app, name="seal")
app.add_typer(resources_app, name="resources")

# One service after the other, each given this long to stop by itself (its own shutdown
# takes at most about 10 s: rpc.server.SHUTDOWN_GRACE_S) before it is killed; in practice
# all five take two or three seconds. One service that hangs costs only its own limit.
STOP_TIMEOUT_PER_SERVICE_S = 12.0


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[
        str | None, typer.Option("--home", envvar="MOSAIC_HOME", help="Instance home directory.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    ctx.obj = CliState(home=home, json=json_out)


@app.command()
def init(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Option(
            help="Instance name (also its SPIFFE trust domain). Required, except with "
            "--renew-internal or --renew-federation-server.",
            show_default=False,
        ),
    ] = "",
    host: Annotated[
        str, typer.Option(help="Host name or address peers use to reach us.")
    ] = "127.0.0.1",
    port_base: Annotated[
        int, typer.Option(help="Every listener lies in N..N+99.")
    ] = DEFAULT_PORT_BASE,
    public_federation_port: Annotated[
        int | None,
        typer.Option(
            help="Port peers dial for queries, if not the federation listener's "
            "(a load balancer in front of gateway replicas)."
        ),
    ] = None,
    public_enrollment_port: Annotated[
        int | None,
        typer.Option(
            help="Port in enrollment URLs, if not the enrollment listener's "
            "(a load balancer in front of gateway replicas)."
        ),
    ] = None,
    ca: Annotated[str, typer.Option(help="Certificate backend: local or step-ca.")] = "local",
    db: Annotated[
        str, typer.Option(help="postgresql://… (default: SQLite files in the home).")
    ] = "",
    valkey: Annotated[
        str, typer.Option(help="redis://… to share rate limits across replicas.")
    ] = "",
    step_ca_url: Annotated[str, typer.Option(help="step-ca URL, https://host:port.")] = "",
    step_ca_root: Annotated[
        Path | None, typer.Option(help="step-ca root certificate (PEM).")
    ] = None,
    step_ca_dns_name: Annotated[str, typer.Option(help="A dnsName of the step-ca.")] = "",
    step_ca_provisioner: Annotated[
        str, typer.Option(help="step-ca: the JWK provisioner's name.")
    ] = "mosaic-fed",
    step_ca_provisioner_key: Annotated[
        Path | None,
        typer.Option(
            help="step-ca: the provisioner's private key file (JWK, JSON); sealed into the home."
        ),
    ] = None,
    renew_internal: Annotated[
        bool, typer.Option(help="Re-issue the internal service certificates of an existing home.")
    ] = False,
    renew_federation_server: Annotated[
        bool,
        typer.Option(
            help="Re-issue the gateway's federation TLS server certificate of an existing home."
        ),
    ] = False,
) -> None:
    """Create an instance home: configuration, secrets, internal and federation PKI."""
    from mosaic.cli.instance import create_instance, issue_internal_pki

    home = resolve_home(state(ctx).home)
    if renew_internal and renew_federation_server:
        fail(
            ctx,
            "USAGE",
            "--renew-internal and --renew-federation-server are separate steps",
            "run one, then the other",
            exit_code=2,
        )
    if renew_internal or renew_federation_server:
        config = load_or_fail(ctx, str(home))
        with _renewal_lock(ctx, home, config.name):
            if renew_internal:
                issue_internal_pki(config, reuse_ca=True)
                emit(
                    ctx,
                    {"home": str(home), "renewed": [*SERVICES, "operator"]},
                    lambda: typer.echo(
                        f"re-issued internal certificates in {config.internal_pki_dir}"
                    ),
                )
            else:
                _renew_federation_server(ctx, home, config)
        return
    if not name:
        fail(ctx, "USAGE", "--name is required", "mosaic init --name NAME", exit_code=2)
    step: StepCAConfig | None = None
    jwk: dict[str, Any] | None = None
    root_pem: bytes | None = None
    if ca == "step-ca":
        if not (step_ca_url and step_ca_root and step_ca_dns_name and step_ca_provisioner_key):
            fail(
                ctx,
                "USAGE",
                "--ca step-ca needs --step-ca-url, --step-ca-root, --step-ca-dns-name and "
                "--step-ca-provisioner-key",
                exit_code=2,
            )
        try:
            jwk = json.loads(step_ca_provisioner_key.read_text())
        except (OSError, ValueError):
            fail(
                ctx,
                "CONFIG",
                "cannot read the provisioner key as JSON",
                "pass the private JWK file",
            )
        try:
            root_pem = step_ca_root.read_bytes()
        except OSError as exc:
            fail(ctx, "CONFIG", f"cannot read --step-ca-root: {exc.strerror}", "pass a PEM file")
        # Written by create_instance, once it knows no instance is there already.
        root_dest = home / "pki" / "stepca" / "root.crt"
        step = StepCAConfig(
            url=step_ca_url,
            root_file=str(root_dest),
            dns_name=step_ca_dns_name,
            provisioner=step_ca_provisioner,
            kid=str(jwk.get("kid", "")) if isinstance(jwk, dict) else "",
        )
    try:
        config = create_instance(
            home,
            name=name,
            host=host,
            port_base=port_base,
            ca_backend=ca,
            db_url=db,
            valkey_url=valkey,
            step_ca=step,
            step_ca_private_jwk=jwk,
            step_ca_root_pem=root_pem,
            public_federation_port=public_federation_port,
            public_enrollment_port=public_enrollment_port,
        )
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)
    except HomeBusy as exc:
        _refuse_busy_home(ctx, exc)
    from ca_service.keys import root_fingerprint

    ports = config.ports
    doc = {
        "home": str(home),
        "name": config.name,
        "federation_endpoint": config.federation_endpoint,
        "enrollment_endpoint": config.enrollment_endpoint,
        "admin_address": config.admin_address,
        "ca_backend": config.ca_backend,
        "database": "postgresql" if config.db_url else "sqlite",
        "federation_root_sha256": root_fingerprint(config),
        "ports": {
            "admin": ports.admin,
            "federation": ports.federation,
            "enrollment": ports.enrollment,
            **ports.internal,
            "metrics": dict(ports.metrics),
        },
    }
    emit(
        ctx,
        doc,
        lambda: table(
            "instance created",
            ["field", "value"],
            [(k, readable(v)) for k, v in doc.items()],
        ),
    )


@contextlib.contextmanager
def _renewal_lock(ctx: typer.Context, home: Path, name: str) -> Iterator[None]:
    """One `init --renew-*` at a time per home (RENEW_LOCK_FILE; a running instance does
    not hold it)."""
    try:
        lock = lock_home(home, "renew", name, lock_file=RENEW_LOCK_FILE)
    except HomeBusy as exc:
        pid = f" (pid {exc.holder.pid})" if exc.holder is not None else ""
        fail(
            ctx,
            "HOME_BUSY",
            f"another `mosaic init --renew-…`{pid} is renewing certificates of {home}",
            "wait for it to finish, then check what it renewed; run it again only if needed",
        )
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)
    try:
        yield
    finally:
        lock.release()


def _renew_federation_server(ctx: typer.Context, home: Path, config: InstanceConfig) -> None:
    from ca_service.keys import renew_federation_server_certificate, root_fingerprint
    from mosaic.runtime import load_sealer

    try:
        cert = renew_federation_server_certificate(config, load_sealer(config))
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)
    doc = {
        "home": str(home),
        "renewed": ["federation-server"],
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "federation_root_sha256": root_fingerprint(config),
        "next": "restart federation-gateway to serve it",
    }
    emit(
        ctx,
        doc,
        lambda: typer.echo(
            f"re-issued the federation server certificate (until {doc['not_after']}); "
            "restart federation-gateway to serve it"
        ),
    )


@app.command()
def serve(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="One of: " + ", ".join(START_ORDER))],
) -> None:
    """Run one service in the foreground (compose runs each service this way)."""
    if service not in SERVICES:
        fail(
            ctx,
            "USAGE",
            f"unknown service {service!r}",
            "one of: " + ", ".join(START_ORDER),
            exit_code=2,
        )
    config = load_or_fail(ctx, state(ctx).home)
    module = importlib.import_module(SERVICES[service].module + ".app")
    # The service imported them already; the CLI need not.
    from mosaic.db import MigrationError
    from mosaic.runtime import StopRequested

    try:
        asyncio.run(module.main(config))
    except StopRequested:
        raise typer.Exit(EXIT_OK) from None
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)
    except MigrationError as exc:
        fail(ctx, "MIGRATION", f"{service} {exc.message}", exc.remediation)


@app.command()
def up(ctx: typer.Context) -> None:
    """Run every service of this home in one foreground process tree, logs on stdout."""
    config = load_or_fail(ctx, state(ctx).home)
    try:
        # Held until this process and the services it starts have all exited: a second
        # `up` is refused here rather than failing in its services (ports taken).
        lock = lock_home(config.home, "up", config.name)
    except HomeBusy as exc:
        _refuse_busy_home(ctx, exc)
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    reports: dict[str, StartReport] = {}

    def start(service: str) -> subprocess.Popen[bytes]:
        # A restart is the same command as the first start: same arguments and
        # environment, and the lock passed on; and a new pipe to report its start on.
        report = reports[service] = StartReport()
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "mosaic.cli", "--home", str(config.home), "serve", service],
                env={**os.environ, "PYTHONUNBUFFERED": "1", **report.env()},
                pass_fds=(lock.fd, report.write_fd),
                # The terminal's Ctrl-C reaches every process of the foreground group: the
                # services ignore it and are stopped below, in order.
                preexec_fn=_ignore_sigint,
            )
        finally:
            report.spawned()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for service in START_ORDER:
        children[service] = start(service)
    exits = {service: ExitHistory() for service in START_ORDER}
    restart_at: dict[str, float] = {}  # services waiting out their delay, not running
    gave_up: tuple[str, int] | None = None
    failed_to_start = False
    while not stopping:
        now = time.monotonic()
        for service in START_ORDER:
            if service in restart_at:
                if now >= restart_at[service]:
                    del restart_at[service]
                    children[service] = start(service)
                    _up_log(
                        "info",
                        "service started again",
                        child=service,
                        pid=children[service].pid,
                        restarts=exits[service].restarts,
                    )
                continue
            returncode = children[service].poll()
            if returncode is None:
                reports[service].started()  # read it while it is there to read
                continue
            started = reports[service].started()
            reports[service].close()
            if not started and exits[service].restarts == 0:
                # Its first start failed: its configuration or its home, which a restart
                # does not change (a database it cannot reach, it waits for).
                _up_log(
                    "error",
                    "service failed to start; stopping the instance",
                    child=service,
                    **describe_exit(returncode),
                )
                gave_up, failed_to_start, stopping = (service, returncode), True, True
                break
            delay = exits[service].next_delay(now, started=started)
            if delay is None:
                _up_log(
                    "error",
                    "service keeps exiting; stopping the instance",
                    child=service,
                    **describe_exit(returncode),
                    exits_in_window=MAX_EXITS_IN_WINDOW,
                    window_s=CRASH_WINDOW_S,
                )
                gave_up = (service, returncode)
                stopping = True
                break
            restart_at[service] = now + delay
            _up_log(
                "warning",
                "service exited; starting it again",
                child=service,
                **describe_exit(returncode),
                restarts=exits[service].restarts,
                next_delay_s=delay,
            )
        else:
            time.sleep(0.2)  # so a stop request waits at most this long
    not_running = set(restart_at) | ({gave_up[0]} if gave_up else set())
    exit_code = _stop_in_order(children, skip=not_running, started=lambda s: reports[s].started())
    for service in restart_at:  # exit 0 says every service ran until the stop
        _up_log("error", "service was not running at the stop", child=service)
        exit_code = 1
    for report in reports.values():
        report.close()
    if gave_up is not None and failed_to_start:
        service, returncode = gave_up
        fail(
            ctx,
            "SERVICE_FAILED_TO_START",
            f"{service} exited while starting ({exit_text(returncode)}); every service of "
            "the instance was stopped",
            f"its log lines above say why (or run `mosaic serve {service}` alone); fix that, "
            "then run mosaic up again",
        )
    if gave_up is not None:
        service, returncode = gave_up
        fail(
            ctx,
            "SERVICE_KEEPS_EXITING",
            f"{service} exited {MAX_EXITS_IN_WINDOW} times within {CRASH_WINDOW_S:g} s "
            f"(last: {exit_text(returncode)}); every service of the instance was stopped",
            f"its log lines above say why (or run `mosaic serve {service}` alone); "
            "fix that, then run mosaic up again",
        )
    raise typer.Exit(exit_code)


def _stop_in_order(
    children: dict[str, subprocess.Popen[bytes]],
    *,
    skip: set[str],
    started: Callable[[str], bool],
) -> int:
    """Stop the running services, the gateway first, ca-service last, each once the one
    before has exited: a service stops while the services it calls still answer, so the
    work it finishes at shutdown (an enrollment, a renewal) can reach them. ``skip``: the
    services not running, whose exit was logged already. 1 when one had to be killed or
    stopped with an error, else 0. A service still starting (not ``started``) that SIGTERM
    ended before it could handle it stopped as asked: it had nothing to finish."""
    exit_code = 0
    for service in reversed(START_ORDER):
        if service in skip:
            continue
        child = children[service]
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT_PER_SERVICE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                _up_log(
                    "error",
                    f"{service} did not stop within {STOP_TIMEOUT_PER_SERVICE_S:g} s; killed",
                )
        if child.returncode == -signal.SIGTERM and not started(service):
            continue
        if child.returncode != 0:  # killed, crashed, or stopped with an error
            _up_log(
                "error",
                f"{service} ended with {exit_text(child.returncode)}",
                child=service,
                **describe_exit(child.returncode),
            )
            exit_code = 1
    return exit_code


def _up_log(level: str, message: str, **fields: object) -> None:
    """One JSON log line like the services' (mosaic.logs), from `up` itself."""
    now = time.time()
    doc = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        + f".{int(now * 1000) % 1000:03d}Z",
        "level": level,
        "service": "mosaic-up",
        "msg": message,
        **fields,
    }
    typer.echo(json.dumps(doc, separators=(",", ":")))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _refuse_busy_home(ctx: typer.Context, exc: HomeBusy) -> NoReturn:
    """The CLI error for a home another `mosaic init` or `mosaic up` holds, naming it."""
    holder, home = exc.holder, exc.home
    if holder is not None and holder.command == "up" and not process_exists(holder.pid):
        # `up` itself was killed, and the services it started, which inherited the lock,
        # still run.
        fail(
            ctx,
            "INSTANCE_RUNNING",
            f"services of instance {holder.name!r} are still running from {home}; the "
            f"mosaic up that started them (pid {holder.pid}) is gone",
            "stop them one at a time, the gateway first: "
            f"{stop_orphans_advice(_orphaned_services(home))}; then start again",
        )
    if holder is not None and holder.command == "up":
        fail(
            ctx,
            "INSTANCE_RUNNING",
            f"instance {holder.name!r} is already running from {home} "
            f"(mosaic up, pid {holder.pid}, since {holder.since})",
            f"use that one, or stop it first (Ctrl-C in its terminal, or `kill {holder.pid}`); "
            "a second instance needs its own --home",
        )
    if holder is not None and holder.command == "init":
        fail(
            ctx,
            "HOME_BUSY",
            f"mosaic init (pid {holder.pid}) is creating instance {holder.name!r} at {home}",
            "wait for it to finish; a second instance needs its own --home",
        )
    fail(
        ctx,
        "HOME_BUSY",
        f"another mosaic init or up holds {home / LOCK_FILE}",
        "wait for it to finish, or stop it; a second instance needs its own --home",
    )


def stop_orphans_advice(left: list[tuple[str, int]]) -> str:
    """How to stop the services ``left`` (service, pid), in that order: one `kill` each."""
    if not left:
        return "each `mosaic serve` process of this home"
    return ", then ".join(f"`kill {pid}` ({service})" for service, pid in left)


def _orphaned_services(home: Path) -> list[tuple[str, int]]:
    """The `mosaic serve` processes of ``home`` still running, in stop order (the gateway
    first); empty where /proc cannot tell."""
    found: dict[str, int] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "--home" in args and args[-2:-1] == ["serve"]:
            at = args.index("--home")
            if at + 1 < len(args) and Path(args[at + 1]).resolve() == home.resolve():
                found[args[-1]] = int(entry.name)
    return [(service, found[service]) for service in reversed(START_ORDER) if service in found]


@gateway_app.command()
def doctor(
    ctx: typer.Context,
    wait: Annotated[float, typer.Option(help="Retry for up to this many seconds until ok.")] = 0.0,
) -> None:
    """Check every service: health, database, migrations, certificates, seal secret."""
    config = load_or_fail(ctx, state(ctx).home)
    deadline = time.monotonic() + wait
    while True:
        checks = asyncio.run(_doctor_checks(config))
        ok = all(c["ok"] for c in checks)
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    doc = {"ok": ok, "checks": checks}

    def human() -> None:
        table(
            "gateway doctor: " + ("ok" if ok else "PROBLEMS"),
            ["service", "check", "ok", "detail", "latency ms", "what to do"],
            [
                (
                    c["service"],
                    c["name"],
                    "yes" if c["ok"] else "NO",
                    c["detail"],
                    f"{c['latency_ms']:.1f}" if c["latency_ms"] else "",
                    c["remediation"],
                )
                for c in checks
            ],
        )

    emit(ctx, doc, human)
    if not ok:
        raise typer.Exit(1)


async def _doctor_checks(config: Any) -> list[dict[str, Any]]:
    async def one(service: str) -> list[dict[str, Any]]:
        channel, metadata, address = service_channel(config, service)
        started = time.perf_counter()
        try:
            async with channel:
                reply = await common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
                    common_pb2.SelfCheckRequest(), metadata=metadata, timeout=5.0
                )
        except grpc.aio.AioRpcError as err:
            return [
                _check(
                    service,
                    "reachable",
                    False,
                    f"{err.code().name} at {address}",
                    _unreachable_remediation(config, service),
                    0.0,
                )
            ]
        rtt = (time.perf_counter() - started) * 1000
        # The address says which process answered: MOSAIC_ADMIN_PORT picks a gateway replica.
        detail = f"version {reply.version} at {address}"
        out = [_check(service, "reachable", True, detail, "", rtt)]
        out += [
            _check(service, c.name, c.ok, c.detail, c.remediation, c.latency_ms)
            for c in reply.checks
        ]
        return out

    results = await asyncio.gather(*(one(s) for s in START_ORDER))
    return [c for group in results for c in group]


def _unreachable_remediation(config: Any, service: str) -> str:
    """What to do about a service that does not answer: start it, unless a `mosaic up` of
    this home runs already, in which case the service is still starting or keeps exiting
    and up's output says why."""
    holder = running_holder(config.home)
    if holder is None or holder.command != "up" or not process_exists(holder.pid):
        return f"start it: `mosaic up` (all) or `mosaic serve {service}`"
    return (
        f"`mosaic up` (pid {holder.pid}) is running, so {service} is still starting or keeps "
        f"exiting: its error lines and up's 'service exited' lines are in up's output "
        f"(run doctor again in a few seconds if it was just started)"
    )


def _check(
    service: str, name: str, ok: bool, detail: str, remediation: str, latency: float
) -> dict[str, Any]:
    return {
        "service": service,
        "name": name,
        "ok": ok,
        "detail": detail,
        "remediation": remediation,
        "latency_ms": round(latency, 3),
    }


# Command modules register themselves on the groups above when imported.
from mosaic.cli import commands  # noqa: E402,F401


def run() -> None:
    """Console-script entry point.

    With --json, a command line the parser refuses (an unknown option, a value of the wrong
    type) is reported like any other failure: one ``{"error": ...}`` document on stdout,
    exit 2 (DESIGN.md "CLI contract"), instead of Typer's usage box on stderr.
    """
    json_out = "--json" in sys.argv[1:]
    try:
        _run(json_out)
    except ConfigError as exc:
        # An unreadable home file (admin token, operator key) found deep in a command:
        # the CONFIG error the command would have given, not a traceback.
        if json_out:
            _json_error("CONFIG", exc.message, EXIT_FAILED, exc.remediation)
        sys.stderr.write(f"error CONFIG: {exc.message}\n")
        if exc.remediation:
            sys.stderr.write(f"what to do {exc.remediation}\n")
        sys.exit(EXIT_FAILED)


def _run(json_out: bool) -> None:
    if not json_out:
        app()
        return
    try:
        result = app(standalone_mode=False)
    except typer.Abort:
        _json_error("ABORTED", "interrupted", EXIT_FAILED)
    except typer.TyperException as exc:  # the parser's errors (click exceptions)
        exit_code = getattr(exc, "exit_code", EXIT_FAILED)
        format_message = getattr(exc, "format_message", None)
        message = format_message() if callable(format_message) else str(exc)
        _json_error("USAGE" if exit_code == EXIT_USAGE else "FAILED", message, exit_code)
    sys.exit(result if isinstance(result, int) else EXIT_OK)


def _json_error(code: str, message: str, exit_code: int, remediation: str = "") -> None:
    if code == "USAGE":
        remediation = "see `mosaic --help` and the command's --help"
    error = {"code": code, "message": message, "remediation": remediation}
    sys.stdout.write(json.dumps({"error": error}, indent=2) + "\n")
    sys.exit(exit_code)
