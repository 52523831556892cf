"""`make bench`: the federation hot path against bare gRPC, in one run, at equal concurrency.

1. Start instance B (SQLite, local CA) as a process tree (`mosaic up`), import 40 rows for
   one user, create and activate a grant, mint its client certificate.
2. Start a bare grpc.aio mTLS unary server in its own process: same server certificate,
   same client-certificate requirement, returning a pre-built ListResponse of the same 20
   rows the gateway returns.
3. Drive both with the same client code: one mTLS channel (as a real peer holds),
   ``--concurrency`` requests in flight, ``List(page_size=20)``; warm-up first, then
   ``--requests`` measured, alternating targets for ``--rounds`` rounds. Short rounds,
   many of them: this VM's speed drifts by ±20% over tens of seconds, and alternating
   every second or two puts both targets through the same drift. The gateway is driven
   twice per round: every request for the same page (identical concurrent reads share
   one resource-service call: the headline ratio), and each request in flight for
   another page (every read its own: what a peer gets when nothing shares its reads).
4. Count TLS handshakes server-side: distinct client connections (``context.peer()``)
   first seen after warm-up, per 1,000 measured requests — from the audit log's
   ``source_address`` on the gateway, and a counter in the bare server.

A benchmark, not a test: it prints a table and writes ``.bench/results.json``.

    .venv/bin/python scripts/bench.py [--requests 1500] [--concurrency 16] [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
MOSAIC = [sys.executable, "-m", "mosaic.cli"]
SUBJECT = "11111111-1111-4111-8111-111111111111"
PAGE_SIZE = 20
ROWS = 40  # imported for the subject: 21 distinct full pages


# ---- the bare server (runs in its own process) -------------------------------------------


def serve_bare(port: int, home: Path, payload_file: Path, stats_file: Path) -> None:
    """A plain grpc.aio mTLS server answering Federation.List with a fixed response."""
    from mosaic.federation.v1 import gateway_pb2, gateway_pb2_grpc
    from mosaic.rpc.options import SERVER_OPTIONS

    payload = gateway_pb2.ListResponse.FromString(payload_file.read_bytes())
    fed = home / "pki" / "federation"
    peers: dict[str, int] = {}
    marks: dict[str, int] = {}

    class Bare(gateway_pb2_grpc.FederationServicer):
        async def List(
            self, request: gateway_pb2.ListRequest, context: grpc.aio.ServicerContext
        ) -> gateway_pb2.ListResponse:
            peer = context.peer()
            if peer not in peers:
                peers[peer] = sum(marks.values())
            marks["n"] = marks.get("n", 0) + 1
            return payload

    async def main() -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        # Only List is overridden; the other methods keep the generated UNIMPLEMENTED.
        gateway_pb2_grpc.add_FederationServicer_to_server(Bare(), server)  # type: ignore[abstract]
        roots = (fed / "root.crt").read_bytes() + (fed / "intermediate.crt").read_bytes()
        credentials = grpc.ssl_server_credentials(
            [((fed / "server.key").read_bytes(), (fed / "server.crt").read_bytes())],
            root_certificates=roots,
            require_client_auth=True,
        )
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(main())
    # peer -> index of the request that first used it
    stats_file.write_text(json.dumps({"first_seen": peers, "requests": marks.get("n", 0)}))


# ---- instance B ----------------------------------------------------------------------------


def cli(home: Path, *args: str, timeout: float = 120) -> Any:
    proc = subprocess.run(
        [*MOSAIC, "--home", str(home), "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mosaic {' '.join(args)} failed: {proc.stdout} {proc.stderr}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def free_port_base() -> int:
    from mosaic.config import find_free_port_base

    return find_free_port_base()


def rows() -> list[Any]:
    from mosaic.federation.v1 import common_pb2

    body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod " * 2
    return [
        common_pb2.ResourceItem(
            id=f"task-{i:04d}",
            resource="tasks",
            owner_user_id=SUBJECT,
            title=f"task number {i}",
            body=body,
        )
        for i in range(ROWS)
    ]


async def prepare(home: Path) -> dict[str, Any]:
    """Rows, an active grant and its client certificate (enrollment's two internal steps)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from mosaic.cli.admin import admin_channel, admin_metadata
    from mosaic.config import load_config
    from mosaic.federation.v1 import (
        ca_pb2,
        ca_pb2_grpc,
        gateway_pb2_grpc,
        grants_pb2,
        grants_pb2_grpc,
        resources_pb2,
        resources_pb2_grpc,
    )
    from mosaic.rpc.channels import internal_client_credentials, secure_channel

    config = load_config(home)

    def internal(target: str, identity: str) -> grpc.aio.Channel:
        return secure_channel(
            config.internal_address(target),
            internal_client_credentials(config, identity),
            server_name=target,
        )

    async with internal("resource-service", "federation-gateway") as channel:
        await resources_pb2_grpc.ResourceSourceStub(channel).ImportResources(
            resources_pb2.ImportResourcesRequest(items=rows()), timeout=30
        )
    scope = {"resources": ["tasks"], "max_rows_per_query": 100}
    async with admin_channel(config) as channel:
        created = await gateway_pb2_grpc.FederationAdminStub(channel).CreateGrant(
            grants_pb2.CreateGrantRequest(
                subject_user_id=SUBJECT, peer_name="bench-peer", scope_json=json.dumps(scope)
            ),
            metadata=admin_metadata(config),
            timeout=30,
        )
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-peer")]))
        .sign(key, hashes.SHA256())
    )
    async with internal("ca-service", "federation-gateway") as channel:
        issued = await ca_pb2_grpc.CertificateAuthorityStub(channel).IssueCertificate(
            ca_pb2.IssueCertificateRequest(
                csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
                grant_id=created.grant.id,
                subject_user_id=SUBJECT,
                peer_id=created.peer.id,
            ),
            timeout=30,
        )
    async with internal("grants-service", "enrollment-service") as channel:
        await grants_pb2_grpc.GrantsStub(channel).ActivateGrantAndPeer(
            grants_pb2.ActivateGrantAndPeerRequest(
                grant_id=created.grant.id,
                peer_id=created.peer.id,
                cert_serial=issued.serial,
                cert_pem=issued.certificate_pem,
                cert_not_after=issued.not_after,
            ),
            timeout=30,
        )
    fed = config.federation_pki_dir
    return {
        "key_pem": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "chain_pem": (issued.certificate_pem + "".join(issued.chain_pem)).encode(),
        "root_pem": (fed / "root.crt").read_bytes(),
        "federation_port": config.ports.federation,
    }


# ---- the load generator (same code for both targets) ---------------------------------------


def open_channel(port: int, material: dict[str, Any]) -> grpc.aio.Channel:
    from mosaic.rpc.options import CLIENT_OPTIONS

    credentials = grpc.ssl_channel_credentials(
        root_certificates=material["root_pem"],
        private_key=material["key_pem"],
        certificate_chain=material["chain_pem"],
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=CLIENT_OPTIONS)


async def drive(
    stub: Any, requests: list[Any], total: int, concurrency: int
) -> tuple[float, list[float], int]:
    """Issue ``total`` requests with ``concurrency`` in flight, taking ``requests`` in
    turn; (seconds, latencies, bytes)."""
    latencies: list[float] = []
    remaining = total
    size = 0

    async def worker() -> None:
        nonlocal remaining, size
        while remaining > 0:
            remaining -= 1
            request = requests[remaining % len(requests)]
            started = time.perf_counter()
            reply = await stub.List(request, timeout=30)
            latencies.append(time.perf_counter() - started)
            size = reply.ByteSize()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, size


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by these processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_cpu() -> tuple[int, int]:
    """(idle, total) CPU time of the whole machine so far, in clock ticks (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def source_reads(metrics_port: int) -> float:
    """How many ListResources calls resource-service has answered so far (its metrics)."""
    from mosaic.metrics import samples, scrape

    return sum(
        sample.value
        for sample in samples(scrape(metrics_port))
        if sample.name == "grpc_server_handled_total"
        and sample.labels.get("grpc_method") == "ListResources"
    )


def round_ratios(results: dict[str, dict[str, Any]], target: str = "list") -> list[float]:
    """Gateway / bare throughput for each round, from the two targets' round times."""
    return [
        round(bare / gateway, 3)
        for gateway, bare in zip(
            results[target]["round_seconds"], results["bare"]["round_seconds"], strict=True
        )
    ]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def distinct_pages(material: dict[str, Any]) -> list[Any]:
    """Full pages that start at every row in turn: the first page, then one page token
    after each of the first rows, walked with page_size=1. Taken in turn by 16 requests
    in flight, no two of them ask resource-service for the same rows."""
    from mosaic.federation.v1 import gateway_pb2, gateway_pb2_grpc

    pages = [gateway_pb2.ListRequest(resource="tasks", page_size=PAGE_SIZE)]
    async with open_channel(material["federation_port"], material) as channel:
        stub = gateway_pb2_grpc.FederationStub(channel)
        token = ""
        for _ in range(ROWS - PAGE_SIZE):
            reply = await stub.List(
                gateway_pb2.ListRequest(resource="tasks", page_size=1, page_token=token),
                timeout=30,
            )
            token = reply.next_page_token
            pages.append(
                gateway_pb2.ListRequest(resource="tasks", page_size=PAGE_SIZE, page_token=token)
            )
    return pages


async def measure(
    targets: dict[str, tuple[int, list[Any]]],
    material: dict[str, Any],
    *,
    requests: int,
    warmup: int,
    concurrency: int,
    rounds: int,
    server_pids: dict[str, list[int]],
    source_metrics_port: int,
) -> dict[str, dict[str, Any]]:
    from mosaic.federation.v1 import gateway_pb2_grpc

    channels = {name: open_channel(port, material) for name, (port, _) in targets.items()}
    stubs = {name: gateway_pb2_grpc.FederationStub(ch) for name, ch in channels.items()}
    results: dict[str, dict[str, Any]] = {
        name: {
            "round_seconds": [],
            "latencies": [],
            "bytes": 0,
            "window": [],
            "server_cpu": 0.0,
            "per_process_cpu": {},
            "client_cpu": 0.0,
            "machine_idle": 0,
            "machine_total": 0,
            "source_reads": 0.0,
        }
        for name in targets
    }
    try:
        for name, stub in stubs.items():
            await drive(stub, targets[name][1], warmup, concurrency)
        for _ in range(rounds):
            for name, stub in stubs.items():
                requests_in_turn = targets[name][1]
                reads_before = source_reads(source_metrics_port)
                window_start = time.time()
                pids = server_pids[name]
                before = {pid: cpu_seconds([pid]) for pid in pids}
                client_before = time.process_time()
                idle_before, total_before = machine_cpu()
                seconds, latencies, size = await drive(
                    stub, requests_in_turn, requests, concurrency
                )
                # Only the gateway's rounds reach resource-service.
                results[name]["source_reads"] += source_reads(source_metrics_port) - reads_before
                results[name]["client_cpu"] += time.process_time() - client_before
                idle_after, total_after = machine_cpu()
                results[name]["machine_idle"] += idle_after - idle_before
                results[name]["machine_total"] += total_after - total_before
                for pid in pids:
                    used = cpu_seconds([pid]) - before[pid]
                    label = _process_label(pid)
                    per = results[name]["per_process_cpu"]
                    per[label] = per.get(label, 0.0) + used
                    results[name]["server_cpu"] += used
                results[name]["round_seconds"].append(seconds)
                results[name]["latencies"] += latencies
                results[name]["bytes"] = size
                results[name]["window"].append((window_start, time.time()))
    finally:
        for channel in channels.values():
            await channel.close()
    return results


def gateway_handshakes(home: Path, windows: list[tuple[float, float]]) -> tuple[int, int]:
    """(new connections first seen inside the measured windows, requests in them)."""
    db = home / "data" / "federation_gateway.db"
    with sqlite3.connect(db) as conn:
        found = conn.execute(
            "SELECT source_address, created_at FROM federation_audit_log "
            "WHERE verb = 'list' ORDER BY created_at"
        ).fetchall()
    first_seen: dict[str, str] = {}
    for source, created in found:
        first_seen.setdefault(source, created)

    def inside(stamp: str) -> bool:
        from datetime import UTC, datetime

        at = datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
        return any(lo <= at <= hi for lo, hi in windows)

    new = sum(1 for stamp in first_seen.values() if inside(stamp))
    requests = sum(1 for _, created in found if inside(created))
    return new, requests


# ---- orchestration ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="measured per round/target")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "results.json")
    parser.add_argument("--keep", action="store_true", help="keep the instance home")
    parser.add_argument("--no-issuance", action="store_true", help="skip the CA signing row")
    parser.add_argument("--bare-server", nargs=4, metavar=("PORT", "HOME", "PAYLOAD", "STATS"))
    args = parser.parse_args()
    if args.bare_server:
        port, home, payload, stats = args.bare_server
        serve_bare(int(port), Path(home), Path(payload), Path(stats))
        return

    # SIGTERM (e.g. `pkill -f bench.py`) would end the process without running the
    # `finally` below and leave instance B running: make it unwind like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    work = Path(tempfile.mkdtemp(prefix="mosaic-bench-"))
    home = work / "b"
    base = free_port_base()
    init = cli(home, "init", "--name", "bench", "--port-base", str(base))
    _set_unlimited_rate(home)
    log = (work / "up.log").open("ab")
    up = subprocess.Popen(
        [*MOSAIC, "--home", str(home), "up"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    bare: subprocess.Popen[bytes] | None = None
    try:
        cli(home, "gateway", "doctor", "--wait", "60", timeout=120)
        material = asyncio.run(prepare(home))
        payload = asyncio.run(_first_page(material))
        payload_file = work / "payload.bin"
        payload_file.write_bytes(payload)
        bare_port = base + 95
        stats_file = work / "bare-stats.json"
        bare = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--bare-server",
                str(bare_port),
                str(home),
                str(payload_file),
                str(stats_file),
            ]
        )
        _wait_port(bare_port)
        from mosaic.federation.v1 import gateway_pb2

        same = [gateway_pb2.ListRequest(resource="tasks", page_size=PAGE_SIZE)]
        distinct = asyncio.run(distinct_pages(material))
        results = asyncio.run(
            measure(
                {
                    "list": (material["federation_port"], same),
                    "distinct": (material["federation_port"], distinct),
                    "bare": (bare_port, same),
                },
                material,
                requests=args.requests,
                warmup=args.warmup,
                concurrency=args.concurrency,
                rounds=args.rounds,
                server_pids={
                    "list": _service_pids(up.pid),
                    "distinct": _service_pids(up.pid),
                    "bare": [bare.pid],
                },
                source_metrics_port=init["ports"]["metrics"]["resource-service"],
            )
        )
        bare.send_signal(signal.SIGTERM)
        bare.wait(15)
        time.sleep(0.5)  # the last audit commits
        report = _report(args, home, results, stats_file)
        if not args.no_issuance:
            report["issuance"] = _issuance()
    finally:
        if bare is not None and bare.poll() is None:
            bare.kill()
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _print(report)
    print(f"wrote {args.out}")


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _service_pids(parent: int) -> list[int]:
    """The `mosaic serve` children of `mosaic up` (every service of instance B)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent:
                found.append(int(entry.name))
    return found


def _process_label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    if b"serve" in argv:
        return argv[argv.index(b"serve") + 1].decode()
    return "bare-server"


def _set_unlimited_rate(home: Path) -> None:
    import tomllib

    import tomli_w

    path = home / "instance.toml"
    doc = tomllib.loads(path.read_text())
    doc["rate_limit"] = {"per_second": 1_000_000.0, "burst": 1_000_000}
    path.write_text(tomli_w.dumps(doc))


async def _first_page(material: dict[str, Any]) -> bytes:
    from mosaic.federation.v1 import gateway_pb2, gateway_pb2_grpc

    async with open_channel(material["federation_port"], material) as channel:
        reply = await gateway_pb2_grpc.FederationStub(channel).List(
            gateway_pb2.ListRequest(resource="tasks", page_size=PAGE_SIZE), timeout=30
        )
    assert len(reply.items) == PAGE_SIZE
    return bytes(reply.SerializeToString())


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while port_free(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"bare server did not listen on {port}")
        time.sleep(0.1)


def _report(
    args: argparse.Namespace, home: Path, results: dict[str, dict[str, Any]], stats_file: Path
) -> dict[str, Any]:
    def figures(name: str) -> dict[str, Any]:
        r = results[name]
        lat = r["latencies"]
        return {
            "rps": round(len(lat) / sum(r["round_seconds"]), 1),
            "p50_ms": round(percentile(lat, 0.50) * 1000, 3),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 3),
            "mean_ms": round(statistics.fmean(lat) * 1000, 3),
            "response_bytes": r["bytes"],
            "requests": len(lat),
            # Server-side CPU per request: robust to other load on the machine.
            "server_cpu_us_per_request": round(1e6 * r["server_cpu"] / len(lat), 1),
            "cpu_us_per_request_by_process": {
                label: round(1e6 * used / len(lat), 1)
                for label, used in r["per_process_cpu"].items()
            },
            # The load generator (this process, same code for both targets) and how much of
            # the machine was left idle: together they show which side bounds a target.
            "client_cpu_us_per_request": round(1e6 * r["client_cpu"] / len(lat), 1),
            "machine_idle_fraction": round(r["machine_idle"] / max(1, r["machine_total"]), 3),
        }

    gw, bare, distinct = figures("list"), figures("bare"), figures("distinct")
    new, seen = gateway_handshakes(home, results["list"]["window"])
    stats = json.loads(stats_file.read_text())
    warm = args.warmup
    bare_new = sum(1 for first in stats["first_seen"].values() if first >= warm)
    bare_seen = max(1, stats["requests"] - warm)
    return {
        "list_rps": gw["rps"],
        "bare_rps": bare["rps"],
        "list_throughput_ratio_vs_bare_grpc": round(gw["rps"] / bare["rps"], 3),
        # The same ratio for each pair of back-to-back rounds (equal request counts, so
        # bare seconds / gateway seconds): its spread shows how far one run's figure can
        # be trusted on a machine whose speed drifts.
        "list_throughput_ratio_by_round": round_ratios(results),
        "list_p50_ms": gw["p50_ms"],
        "list_p99_ms": gw["p99_ms"],
        "bare_p50_ms": bare["p50_ms"],
        "bare_p99_ms": bare["p99_ms"],
        "handshakes_per_1000": round(1000 * new / max(1, seen), 3),
        # Identical concurrent reads share one resource-service call (federation.py _read).
        "list_requests_per_source_read": round(
            gw["requests"] / max(1.0, results["list"]["source_reads"]), 2
        ),
        # The same List, but each request in flight asks for another page (its own read):
        # what a peer gets when no other request shares its read.
        "list_distinct_rps": distinct["rps"],
        "list_distinct_throughput_ratio_vs_bare_grpc": round(distinct["rps"] / bare["rps"], 3),
        "list_distinct_throughput_ratio_by_round": round_ratios(results, "distinct"),
        "list_distinct_p50_ms": distinct["p50_ms"],
        "list_distinct_p99_ms": distinct["p99_ms"],
        "list_distinct_requests_per_source_read": round(
            distinct["requests"] / max(1.0, results["distinct"]["source_reads"]), 2
        ),
        "list_server_cpu_us_per_request": gw["server_cpu_us_per_request"],
        "bare_server_cpu_us_per_request": bare["server_cpu_us_per_request"],
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "bare_handshakes_per_1000": round(1000 * bare_new / bare_seen, 3),
        "list": gw,
        "list_distinct": distinct,
        "bare": bare,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "page_size": PAGE_SIZE,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "run_id": uuid.uuid4().hex[:8],
    }


def _issuance() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_issuance

    return dict(asyncio.run(bench_issuance.run(300, 20)))


def _print(report: dict[str, Any]) -> None:
    gw, bare = report["list"], report["bare"]
    print()
    print(
        f"Federation.List ({report['page_size']} rows, {gw['response_bytes']} B) vs bare "
        f"grpc.aio mTLS, concurrency {report['concurrency']}, "
        f"{report['rounds']} x {report['requests_per_round']} requests each, {report['cpus']} CPUs"
    )
    header = (
        f"{'target':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'handshakes/1000':>18}"
        f"{'server CPU us/req':>20}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{'gateway List (whole path)':<28}{gw['rps']:>10.0f}{gw['p50_ms']:>10.2f}"
        f"{gw['p99_ms']:>10.2f}{report['handshakes_per_1000']:>18.2f}"
        f"{gw['server_cpu_us_per_request']:>20.0f}"
    )
    distinct = report["list_distinct"]
    print(
        f"{'gateway List, other pages':<28}{distinct['rps']:>10.0f}"
        f"{distinct['p50_ms']:>10.2f}{distinct['p99_ms']:>10.2f}{'':>18}"
        f"{distinct['server_cpu_us_per_request']:>20.0f}"
    )
    print(
        f"{'bare grpc.aio mTLS':<28}{bare['rps']:>10.0f}{bare['p50_ms']:>10.2f}"
        f"{bare['p99_ms']:>10.2f}{report['bare_handshakes_per_1000']:>18.2f}"
        f"{bare['server_cpu_us_per_request']:>20.0f}"
    )
    rounds = report["list_throughput_ratio_by_round"]
    print(
        f"throughput ratio (gateway / bare): {report['list_throughput_ratio_vs_bare_grpc']:.3f}"
        f" (by round: median {statistics.median(rounds):.3f}, "
        f"{min(rounds):.3f} to {max(rounds):.3f})"
    )
    rounds = report["list_distinct_throughput_ratio_by_round"]
    print(
        "with every request in flight on another page (no shared reads, "
        f"{report['list_distinct_requests_per_source_read']:.1f} per read): "
        f"{report['list_distinct_throughput_ratio_vs_bare_grpc']:.3f}"
        f" (by round: median {statistics.median(rounds):.3f}, "
        f"{min(rounds):.3f} to {max(rounds):.3f})"
    )
    by_process = ", ".join(
        f"{label} {us:.0f}" for label, us in gw["cpu_us_per_request_by_process"].items() if us
    )
    print(f"instance B CPU us per List request, by process: {by_process}")
    by_process = ", ".join(
        f"{label} {us:.0f}" for label, us in distinct["cpu_us_per_request_by_process"].items() if us
    )
    print(f"  the same, other pages: {by_process}")
    print(
        "List requests per resource-service read (identical concurrent reads share one): "
        f"{report['list_requests_per_source_read']:.1f}"
    )
    print(
        f"load generator CPU us/req: gateway {gw['client_cpu_us_per_request']:.0f}, "
        f"bare {bare['client_cpu_us_per_request']:.0f}; machine idle during the rounds: "
        f"gateway {gw['machine_idle_fraction']:.0%}, bare {bare['machine_idle_fraction']:.0%}"
    )
    print(
        "gateway CPU counts every service of B (gateway, resource-service, ...); "
        f"1-min load average at the end: {report['load_average_1m_at_end']}"
    )
    if "issuance" in report:
        iss = report["issuance"]
        print(
            f"CA signing (LocalCABackend.sign): {iss['certificates_per_second']:.0f} certs/s, "
            f"p50 {iss['p50_us']:.0f} us"
        )


if __name__ == "__main__":
    main()
