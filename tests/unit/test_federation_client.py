"""FederationClient against a real mTLS server in this process: its channel lifecycle (a
flush never lets stale credentials back in, and never cuts off a call already in flight),
how the peer's refusals reach the operator, and which cached answers may be served stale."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import any_pb2
from google.rpc import status_pb2
from prometheus_client import REGISTRY

from federation_gateway import client as client_module
from federation_gateway.client import FederationClient, PeerError
from mosaic.errors import (
    ServiceError,
    failed_precondition,
    invalid_argument,
    permission_denied,
    unavailable,
)
from mosaic.federation.v1 import common_pb2, gateway_pb2, grants_pb2
from mosaic.pki import KeyPair, create_internal_ca, issue_internal_certificate
from mosaic.rpc.options import CLIENT_OPTIONS
from tests.support.federation_fakes import service_rpc_error

PEER_ID = str(uuid.uuid4())
B_REQUEST_ID = "b-request-0123456789"
EXPIRED = 2  # tls.clients[EXPIRED] expired an hour ago
NOT_YET_VALID = 3  # tls.clients[NOT_YET_VALID] is valid from an hour from now


@dataclass
class Tls:
    ca: KeyPair
    server: KeyPair
    clients: list[KeyPair]


@pytest.fixture(scope="module")
def tls() -> Tls:
    ca = create_internal_ca("test.invalid")
    return Tls(
        ca=ca,
        server=issue_internal_certificate(ca, "test.invalid", "peer-b"),
        clients=[
            *(issue_internal_certificate(ca, "test.invalid", f"a{i}") for i in range(2)),
            _client_valid_for(ca, "a-expired", dt.timedelta(days=-1), dt.timedelta(hours=-1)),
            _client_valid_for(ca, "a-future", dt.timedelta(hours=1), dt.timedelta(days=1)),
        ],
    )


def _client_valid_for(ca: KeyPair, name: str, starts: dt.timedelta, ends: dt.timedelta) -> KeyPair:
    """A client certificate from the same CA, valid from now + ``starts`` to now + ``ends``."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + starts)
        .not_valid_after(now + ends)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class SlowPeer:
    """Federation.Capabilities that answers once ``release`` is set, or refuses with
    ``refusal`` (as RenewCertificate does); Get answers the row asked for (or another
    one), or the resource's ``get_refusals``; List refuses its arguments the way B's gate does.
    ``go_offline`` stops the server."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.refusal: ServiceError | None = None
        self.request_id = ""  # sent with ``refusal``, as B's interceptor does
        # Sent with ``refusal`` instead of its grpc-status-details-bin, when set (b"": no
        # details at all, as from a server without rich errors).
        self.details_bin: bytes | None = None
        self.get_refusals: dict[str, ServiceError] = {}  # by resource
        self.get_answers_another_row = False
        self.body = ""  # of the row Get answers
        self.server: grpc.aio.Server | None = None

    async def go_offline(self) -> None:
        assert self.server is not None
        await self.server.stop(None)

    async def capabilities(
        self, request: gateway_pb2.CapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CapabilitiesResponse:
        self.started.set()
        if self.refusal is not None:
            status = self.refusal.to_status()
            metadata = tuple(status.trailing_metadata)
            if self.details_bin is not None:
                details = self.details_bin
                metadata = (("grpc-status-details-bin", details),) if details else ()
            if self.request_id:
                metadata = (*metadata, ("x-request-id", self.request_id))
            await context.abort_with_status(status._replace(trailing_metadata=metadata))
        await self.release.wait()
        return gateway_pb2.CapabilitiesResponse(server_version="test")

    async def renew_certificate(
        self, request: gateway_pb2.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RenewCertificateResponse:
        if self.refusal is not None:
            await context.abort_with_status(self.refusal.to_status())
        return gateway_pb2.RenewCertificateResponse()

    async def get(
        self, request: gateway_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetResponse:
        refusal = self.get_refusals.get(request.resource)
        if refusal is not None:
            await context.abort_with_status(refusal.to_status())
        context.set_trailing_metadata((("x-request-id", B_REQUEST_ID),))
        row_id = "another-row" if self.get_answers_another_row else request.id
        item = common_pb2.ResourceItem(id=row_id, resource=request.resource, body=self.body)
        return gateway_pb2.GetResponse(item=item)

    async def list(
        self, request: gateway_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListResponse:
        refusal = invalid_argument(
            "RESOURCE_UNKNOWN", "unknown resource", violations=[("resource", "not known")]
        )
        await context.abort_with_status(refusal.to_status())
        raise AssertionError("abort returns only by raising")


@pytest.fixture
async def peer_b(tls: Tls) -> AsyncIterator[tuple[SlowPeer, int]]:
    peer = SlowPeer()
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "mosaic.federation.v1.Federation",
        {
            "Capabilities": grpc.unary_unary_rpc_method_handler(
                peer.capabilities,
                request_deserializer=gateway_pb2.CapabilitiesRequest.FromString,
                response_serializer=gateway_pb2.CapabilitiesResponse.SerializeToString,
            ),
            "List": grpc.unary_unary_rpc_method_handler(
                peer.list,
                request_deserializer=gateway_pb2.ListRequest.FromString,
                response_serializer=gateway_pb2.ListResponse.SerializeToString,
            ),
            "RenewCertificate": grpc.unary_unary_rpc_method_handler(
                peer.renew_certificate,
                request_deserializer=gateway_pb2.RenewCertificateRequest.FromString,
                response_serializer=gateway_pb2.RenewCertificateResponse.SerializeToString,
            ),
            "Get": grpc.unary_unary_rpc_method_handler(
                peer.get,
                request_deserializer=gateway_pb2.GetRequest.FromString,
                response_serializer=gateway_pb2.GetResponse.SerializeToString,
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    credentials = grpc.ssl_server_credentials(
        [(tls.server.key_pem, tls.server.cert_pem)],
        root_certificates=tls.ca.cert_pem,
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    peer.server = server
    yield peer, port
    await server.stop(None)


class FakeGrants:
    """GetPeerCredentials answering with the current client certificate; a fetch can be
    held open to let a flush land in the middle of a channel build."""

    def __init__(self, tls: Tls, port: int) -> None:
        self._tls = tls
        self._port = port
        self.current = 0  # which of tls.clients is the peer's certificate now
        self.state: grants_pb2.PeerState.ValueType = grants_pb2.PEER_STATE_ACTIVE
        self.calls = 0
        self.hold: asyncio.Event | None = None
        self.fetching = asyncio.Event()
        self.refusal: ServiceError | None = None
        self.request_id = ""  # sent with ``refusal``, as B's interceptor does

    async def GetPeerCredentials(
        self, request: grants_pb2.GetPeerCredentialsRequest, timeout: float
    ) -> grants_pb2.GetPeerCredentialsResponse:
        self.calls += 1
        if self.refusal is not None:
            raise service_rpc_error(self.refusal)
        client = self._tls.clients[self.current]
        reply = grants_pb2.GetPeerCredentialsResponse(
            peer=grants_pb2.Peer(
                id=PEER_ID,
                name="b",
                direction=grants_pb2.PEER_DIRECTION_OUTBOUND,
                state=self.state,
                endpoint=f"127.0.0.1:{self._port}",
                cert_pem=client.cert_pem.decode(),
                cert_serial=f"serial-{self.current}",
                ca_bundle_pem=self._tls.ca.cert_pem.decode(),
            ),
            client_key_pem=client.key_pem.decode(),
        )
        self.fetching.set()
        if self.hold is not None:
            await self.hold.wait()
        return reply


def _capabilities() -> gateway_pb2.QueryRequest:
    return gateway_pb2.QueryRequest(peer="b", capabilities=gateway_pb2.CapabilitiesRequest())


def _get(row_id: str, resource: str = "tasks") -> gateway_pb2.QueryRequest:
    return gateway_pb2.QueryRequest(
        peer="b", get=gateway_pb2.GetRequest(resource=resource, id=row_id)
    )


async def _code_of(client: FederationClient, request: gateway_pb2.QueryRequest) -> str:
    """The PeerError code the query fails with, or "stale"/"fresh" for an answer."""
    try:
        answer = await client.query(request)
    except PeerError as exc:
        return exc.code
    return "stale" if answer.stale else "fresh"


@dataclass
class Setup:
    peer: SlowPeer
    grants: FakeGrants
    client: FederationClient


@pytest.fixture
async def setup(tls: Tls, peer_b: tuple[SlowPeer, int]) -> AsyncIterator[Setup]:
    peer, port = peer_b
    grants = FakeGrants(tls, port)
    client = FederationClient(grants)  # type: ignore[arg-type]
    yield Setup(peer, grants, client)
    await client.close()


@pytest.mark.parametrize("flush", ["flush", "clear"])
async def test_a_flush_during_a_build_makes_it_fetch_the_credentials_again(
    setup: Setup, flush: str
) -> None:
    """A renewal replaces our certificate while the first call is building the channel:
    the channel must present the new certificate, not the one fetched before the flush.
    ``clear`` (the change stream broke) counts too, though no channel is stored yet."""
    grants, client = setup.grants, setup.client
    grants.hold = asyncio.Event()
    building = asyncio.create_task(client.channel("b"))
    await grants.fetching.wait()
    grants.current = 1  # renewed: the stored certificate changes ...
    if flush == "flush":
        client.flush(PEER_ID)  # ... and the change stream flushes the peer
    else:
        client.clear()
    grants.hold.set()
    built = await building
    assert built.cert_serial == "serial-1"
    assert grants.calls == 2
    assert (await client.channel("b")) is built


async def test_a_flush_lets_the_call_in_flight_finish(setup: Setup) -> None:
    """The flushed channel stays open for the calls already on it: the answer arrives after
    the flush (here 1.5 s later), the channel closes then, and the next call builds a new
    one."""
    client = setup.client
    query = asyncio.create_task(client.query(_capabilities()))
    await setup.peer.started.wait()
    flushed = client._channels[PEER_ID].channel
    client.flush(PEER_ID)
    await asyncio.sleep(1.5)
    setup.peer.release.set()
    answer = await query
    assert answer.capabilities.server_version == "test"
    for _ in range(100):  # its close runs as a task of its own
        if flushed.get_state() == grpc.ChannelConnectivity.SHUTDOWN:
            break
        await asyncio.sleep(0.01)
    assert flushed.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    assert client.builds == 1
    await client.query(_capabilities())
    assert client.builds == 2


async def test_shutdown_closes_a_flushed_channel_at_once_and_types_the_cut_call(
    setup: Setup,
) -> None:
    query = asyncio.create_task(setup.client.query(_capabilities()))
    await setup.peer.started.wait()
    setup.client.flush(PEER_ID)
    # At once: well inside the call's own 5 s deadline.
    await asyncio.wait_for(setup.client.close(), timeout=2)
    with pytest.raises(PeerError) as caught:
        await query
    assert caught.value.code == "NETWORK"


async def test_our_own_cancellation_is_not_turned_into_an_error(setup: Setup) -> None:
    query: asyncio.Task[Any] = asyncio.create_task(setup.client.query(_capabilities()))
    await setup.peer.started.wait()
    query.cancel()
    with pytest.raises(asyncio.CancelledError):
        await query


async def test_the_peer_refusing_our_arguments_is_invalid_argument_with_its_violations(
    setup: Setup,
) -> None:
    """Not INVALID_RESPONSE: the peer is fine, our request was not (a mistyped resource)."""
    with pytest.raises(PeerError) as caught:
        await setup.client.query(
            gateway_pb2.QueryRequest(peer="b", list=gateway_pb2.ListRequest(resource="taks"))
        )
    error = caught.value
    assert (error.code, error.server_reason) == ("INVALID_ARGUMENT", "RESOURCE_UNKNOWN")
    assert error.violations == (("resource", "not known"),)
    ours = error.to_service_error()
    assert ours.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ours.violations == (("resource", "not known"),)


@pytest.mark.parametrize(
    ("refusal", "remediation"),
    [
        (
            failed_precondition(
                "CERT_NOT_CURRENT",
                "the certificate being renewed is no longer the grant's current one",
                remediation="another renewal won; use the grant's current certificate",
            ),
            "another renewal won; use the grant's current certificate",
        ),
        (
            failed_precondition(
                "GRANT_REVOKED", "grant is revoked and its certificate cannot be renewed"
            ),
            "ask the peer's operator to check the grant",
        ),
    ],
    ids=["lost-renewal", "grant-revoked-meanwhile"],
)
async def test_the_peer_refusing_a_renewal_is_forbidden_with_its_reason_and_advice(
    setup: Setup, refusal: ServiceError, remediation: str
) -> None:
    """B passes on grants-service's FAILED_PRECONDITION when the grant's state does not
    allow the renewal: that is B refusing us (FORBIDDEN), not a malformed answer."""
    setup.peer.refusal = refusal
    with pytest.raises(PeerError) as caught:
        await setup.client.renew("b", "csr")
    error = caught.value
    assert (error.code, error.server_reason) == ("FORBIDDEN", refusal.reason)
    assert error.message == refusal.message
    ours = error.to_service_error()
    assert ours.code == grpc.StatusCode.PERMISSION_DENIED
    assert ours.remediation == remediation


async def test_the_peer_up_but_unable_to_answer_keeps_its_reason_and_serves_nothing_stale(
    setup: Setup,
) -> None:
    """B answered (it is reachable) that it cannot serve now: its reason, message, advice
    and retry delay reach the operator, and no older answer stands in for the one B
    withheld (stale answers are for a B that could not be reached)."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    setup.peer.refusal = unavailable(
        "REVOCATIONS_NOT_LOADED",
        "the gateway has not loaded the revocation list yet",
        remediation="retry shortly",
        retry_after_s=1.0,
    )
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_capabilities())
    error = caught.value
    assert (error.code, error.server_reason) == ("NETWORK", "REVOCATIONS_NOT_LOADED")
    assert "has not loaded the revocation list" in error.message
    ours = error.to_service_error()
    assert ours.code == grpc.StatusCode.UNAVAILABLE
    assert (ours.remediation, ours.retry_after_s) == ("retry shortly", 1.0)
    assert ours.metadata["server_reason"] == "REVOCATIONS_NOT_LOADED"


async def test_unusable_credentials_keep_grants_services_reason_and_remediation(
    setup: Setup,
) -> None:
    """A sealed key that cannot be opened needs the old seal secret restored, not a new
    enrollment first: the operator gets grants-service's own advice."""
    setup.grants.refusal = failed_precondition(
        "SEAL_KEY_UNKNOWN",
        "the peer's sealed client key cannot be opened",
        remediation="restore it as secrets/seal.previous.key",
    )
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_capabilities())
    assert caught.value.code == "PEER_MISCONFIGURED"
    assert "SEAL_KEY_UNKNOWN" in caught.value.message
    assert caught.value.to_service_error().remediation == (
        "restore it as secrets/seal.previous.key"
    )


async def test_querying_a_peer_we_serve_does_not_advise_removing_it(setup: Setup) -> None:
    """grants-service has no client key for an inbound peer; the generic advice for
    unusable credentials ("remove the peer and enroll again") would delete its grants."""
    setup.grants.refusal = failed_precondition(
        "PEER_HAS_NO_CREDENTIALS", "this peer has no client key (only peers we query have one)"
    )
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_capabilities())
    assert caught.value.code == "PEER_NOT_FOUND"
    assert "a peer we serve, not one we query" in caught.value.message
    assert "remove" not in (caught.value.to_service_error().remediation or "")


async def test_a_peer_state_added_by_a_newer_grants_service_is_inactive_not_a_crash(
    setup: Setup,
) -> None:
    """A state this release has no name for is not active: the peer is not queried, and
    the operator reads the state's number rather than an internal error."""
    setup.grants.state = grants_pb2.PeerState.ValueType(7)
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_capabilities())
    assert caught.value.code == "PEER_INACTIVE"
    assert caught.value.message == "peer b is unknown (7)"
    assert setup.client.builds == 0


async def test_keys_that_are_not_peers_leave_no_lock_behind(setup: Setup) -> None:
    """The admin API passes any string as a peer key: refused lookups must not make the
    client's per-key state grow."""
    setup.grants.refusal = ServiceError(grpc.StatusCode.NOT_FOUND, "PEER_NOT_FOUND", "no peer")
    for n in range(20):
        with pytest.raises(PeerError):
            await setup.client.channel(f"no-such-peer-{n}")
    assert setup.client._locks == {}
    setup.grants.refusal = None
    await asyncio.gather(*(setup.client.channel("b") for _ in range(10)))
    assert setup.client.builds == 1 and setup.client._locks == {}


async def test_a_build_that_outlives_shutdown_stores_no_channel(setup: Setup) -> None:
    grants, client = setup.grants, setup.client
    grants.hold = asyncio.Event()
    building = asyncio.create_task(client.channel("b"))
    await grants.fetching.wait()
    await client.close()
    grants.hold.set()
    with pytest.raises(PeerError) as caught:
        await building
    assert caught.value.code == "NETWORK"
    assert client._channels == {} and client.builds == 0


# ---- the answer cache --------------------------------------------------------------------


async def test_a_cached_answer_is_served_stale_while_the_peer_is_offline(setup: Setup) -> None:
    """The baseline the next tests depart from: B goes offline, a cached answer comes back
    stale, an uncached one fails as NETWORK."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "stale"
    assert await _code_of(setup.client, _get("row-1")) == "NETWORK"


def _calls() -> dict[tuple[str, str], float]:
    """mosaic_federation_client_calls_total now, by (verb, result)."""
    return {
        (verb, result): REGISTRY.get_sample_value(
            "mosaic_federation_client_calls_total", {"verb": verb, "result": result}
        )
        or 0.0
        for verb in ("capabilities", "get", "renew")
        for result in ("ok", "stale", "unreachable", "unavailable", "refused", "invalid_response")
    }


def _moved(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """The series that moved since ``before``, by how much."""
    return {key: value - before[key] for key, value in _calls().items() if value != before[key]}


async def test_stale_answers_and_an_unreachable_peer_show_in_the_metrics(setup: Setup) -> None:
    """A stale answer is OK on our own Query RPC: only the client's counter tells the
    operator that B is down. Each call counts once, under how it ended."""
    setup.peer.release.set()
    before = _calls()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    assert _moved(before) == {("capabilities", "ok"): 1}
    await setup.peer.go_offline()
    before = _calls()
    assert await _code_of(setup.client, _capabilities()) == "stale"
    assert _moved(before) == {("capabilities", "stale"): 1}
    before = _calls()
    assert await _code_of(setup.client, _get("row-1")) == "NETWORK"
    assert _moved(before) == {("get", "unreachable"): 1}
    before = _calls()
    with pytest.raises(PeerError):
        await setup.client.renew("b", "csr")
    assert _moved(before) == {("renew", "unreachable"): 1}


async def test_a_peer_that_answers_no_is_counted_apart_from_one_that_is_down(
    setup: Setup,
) -> None:
    """B refusing, B up but unable to answer, and B answering wrongly each have their own
    result; none of them is a stale answer."""
    setup.peer.release.set()
    setup.peer.get_refusals["notes"] = permission_denied("RESOURCE_NOT_GRANTED", "not granted")
    before = _calls()
    assert await _code_of(setup.client, _get("row-1", "notes")) == "FORBIDDEN"
    assert _moved(before) == {("get", "refused"): 1}
    setup.peer.get_answers_another_row = True
    before = _calls()
    assert await _code_of(setup.client, _get("row-1")) == "INVALID_RESPONSE"
    assert _moved(before) == {("get", "invalid_response"): 1}
    setup.peer.refusal = unavailable("DEPENDENCY_UNAVAILABLE", "the database is down")
    before = _calls()
    assert await _code_of(setup.client, _capabilities()) == "NETWORK"
    assert _moved(before) == {("capabilities", "unavailable"): 1}
    before = _calls()
    with pytest.raises(PeerError):
        await setup.client.renew("b", "csr")
    assert _moved(before) == {("renew", "unavailable"): 1}


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (permission_denied("GRANT_REVOKED", "the grant has been revoked"), "FORBIDDEN"),
        (
            ServiceError(grpc.StatusCode.UNAUTHENTICATED, "CERT_NO_GRANT", "no grant"),
            "UNAUTHENTICATED",
        ),
    ],
    ids=["forbidden", "unauthenticated"],
)
async def test_after_the_peer_refused_us_none_of_its_answers_is_served_stale(
    setup: Setup, refusal: ServiceError, code: str
) -> None:
    """B withdrew our access, then went offline within the cache TTL: what it served
    before the refusal must not come back, stale or not."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    assert await _code_of(setup.client, _get("row-1")) == "fresh"
    setup.peer.refusal = refusal
    assert await _code_of(setup.client, _capabilities()) == code
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "NETWORK"
    assert await _code_of(setup.client, _get("row-1")) == "NETWORK"


async def test_a_verb_the_peer_does_not_implement_is_named_and_keeps_its_answers(
    setup: Setup,
) -> None:
    """An older B without the `search` verb (this B has no Search method) answers
    UNIMPLEMENTED: the operator hears which verb B lacks and how to see what B serves, not
    that B answered wrongly; B withdrew nothing, so its answers are still served stale."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    with pytest.raises(PeerError) as caught:
        await setup.client.query(
            gateway_pb2.QueryRequest(
                peer="b", search=gateway_pb2.SearchRequest(resource="tasks", query="x")
            )
        )
    error = caught.value
    assert (error.code, error.server_reason) == ("INVALID_ARGUMENT", "UNIMPLEMENTED")
    assert "does not implement the `search` verb" in error.message
    ours = error.to_service_error()
    assert ours.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "capabilities" in ours.remediation and "upgrade" in ours.remediation
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "stale"


@pytest.mark.parametrize(
    ("status", "code", "ours", "said"),
    [
        (grpc.StatusCode.ABORTED, "NETWORK", grpc.StatusCode.UNAVAILABLE, "gave up"),
        (grpc.StatusCode.CANCELLED, "NETWORK", grpc.StatusCode.UNAVAILABLE, "gave up"),
        (grpc.StatusCode.DATA_LOSS, "NETWORK", grpc.StatusCode.UNAVAILABLE, "failed to answer"),
        (
            grpc.StatusCode.OUT_OF_RANGE,
            "INVALID_ARGUMENT",
            grpc.StatusCode.INVALID_ARGUMENT,
            "past the end",
        ),
        (
            grpc.StatusCode.ALREADY_EXISTS,
            "INVALID_RESPONSE",
            grpc.StatusCode.FAILED_PRECONDITION,
            "with status ALREADY_EXISTS",
        ),
    ],
    ids=lambda value: value.name if isinstance(value, grpc.StatusCode) else None,
)
async def test_other_statuses_of_the_peer_are_typed_with_advice_and_keep_its_answers(
    setup: Setup, status: grpc.StatusCode, code: str, ours: grpc.StatusCode, said: str
) -> None:
    """Statuses a peer of another release may answer with (here without rich details):
    each is a typed error naming the status, with a remediation; none says anything about
    our access, so nothing stale is served while B answers so and B's earlier answers are
    kept for when it goes offline."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    setup.peer.refusal = ServiceError(status, status.name, "past the end")
    setup.peer.details_bin = b""
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_capabilities())
    error = caught.value
    assert (error.code, error.server_reason) == (code, status.name)
    assert said in error.message
    service_error = error.to_service_error()
    assert service_error.code == ours
    assert service_error.remediation
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "stale"


def _status_with_a_corrupt_error_info() -> bytes:
    """A google.rpc.Status for PERMISSION_DENIED whose ErrorInfo detail does not parse."""
    detail = any_pb2.Any(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff\xff")
    status = status_pb2.Status(
        code=grpc.StatusCode.PERMISSION_DENIED.value[0], message="denied", details=[detail]
    )
    return status.SerializeToString()


@pytest.mark.parametrize(
    "details_bin",
    [b"\xff\xff\xff", _status_with_a_corrupt_error_info()],
    ids=["status-does-not-parse", "error-info-does-not-parse"],
)
async def test_a_refusal_with_details_that_do_not_parse_is_still_typed_by_its_status(
    setup: Setup, details_bin: bytes
) -> None:
    """B (another release, or something in between) refuses us with details we cannot
    parse: the refusal still reaches the operator as FORBIDDEN with B's message, not as an
    internal error of ours, and B's earlier answers are dropped as for any refusal."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    setup.peer.refusal = permission_denied("GRANT_REVOKED", "the grant has been revoked")
    setup.peer.details_bin = details_bin
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_capabilities())
    error = caught.value
    assert error.code == "FORBIDDEN"
    assert error.message == "the grant has been revoked"
    assert error.to_service_error().code == grpc.StatusCode.PERMISSION_DENIED
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "NETWORK"


@pytest.mark.parametrize("status", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN])
async def test_the_peer_failing_to_answer_is_network_and_keeps_its_answers(
    setup: Setup, status: grpc.StatusCode
) -> None:
    """B failing internally (its database down before it mapped that, a bug) is B unable to
    answer now, not B withdrawing anything: NETWORK naming B's request id, nothing stale
    served while B answers so, and the cache kept for when B goes offline next."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    setup.peer.refusal = ServiceError(status, "INTERNAL", "internal error (request id r-1)")
    setup.peer.request_id = B_REQUEST_ID
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_capabilities())
    error = caught.value
    assert (error.code, error.server_reason) == ("NETWORK", status.name)
    assert B_REQUEST_ID in error.message and error.request_id == B_REQUEST_ID
    assert error.to_service_error().code == grpc.StatusCode.UNAVAILABLE
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "stale"


async def test_a_wrong_answer_names_b_s_request_id_and_drops_the_peer_s_answers(
    setup: Setup,
) -> None:
    """A peer that sent rows we did not ask for cannot be trusted with what it sent before."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    setup.peer.get_answers_another_row = True
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_get("row-1"))
    assert caught.value.code == "INVALID_RESPONSE"
    # B's request id, so B's operator can find the request in its audit log.
    assert caught.value.to_service_error().metadata["request_id"] == B_REQUEST_ID
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "NETWORK"


async def test_a_resource_outside_the_scope_drops_only_that_resource_s_answers(
    setup: Setup,
) -> None:
    """A grant's scope never changes: B refusing one resource (an operator's typo, a
    resource never granted) withdraws nothing else it served."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    assert await _code_of(setup.client, _get("row-1", "tasks")) == "fresh"
    assert await _code_of(setup.client, _get("row-1", "notes")) == "fresh"
    setup.peer.get_refusals["notes"] = permission_denied(
        "RESOURCE_EXCLUDED", "notes is excluded by this grant"
    )
    assert await _code_of(setup.client, _get("row-2", "notes")) == "FORBIDDEN"
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _get("row-1", "notes")) == "NETWORK"
    assert await _code_of(setup.client, _get("row-1", "tasks")) == "stale"
    assert await _code_of(setup.client, _capabilities()) == "stale"


async def test_a_row_the_peer_no_longer_finds_is_not_served_stale(setup: Setup) -> None:
    """Only that row is forgotten: B still serves the rest."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _get("row-1")) == "fresh"
    assert await _code_of(setup.client, _get("row-2")) == "fresh"
    setup.peer.get_refusals["tasks"] = ServiceError(
        grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", "no such resource"
    )
    assert await _code_of(setup.client, _get("row-1")) == "NOT_FOUND"
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _get("row-1")) == "NETWORK"
    assert await _code_of(setup.client, _get("row-2")) == "stale"


@pytest.mark.parametrize("flush", ["flush", "clear"])
async def test_a_flushed_peer_s_answers_are_not_served_stale(setup: Setup, flush: str) -> None:
    """The change stream names the peer (suspended, removed, renewed) or breaks: what was
    cached under the old state is forgotten."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    if flush == "flush":
        setup.client.flush(PEER_ID)
    else:
        setup.client.clear()
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "NETWORK"


async def test_an_answer_that_arrives_after_a_flush_is_returned_but_not_kept(
    setup: Setup,
) -> None:
    query = asyncio.create_task(setup.client.query(_capabilities()))
    await setup.peer.started.wait()
    setup.client.flush(PEER_ID)
    setup.peer.release.set()
    assert not (await query).stale
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "NETWORK"


async def test_the_cache_keeps_no_more_bytes_than_its_budget(setup: Setup) -> None:
    """Room for two answers of ~10 kB: the third pushes the oldest out (the entry count
    alone would have kept all three)."""
    setup.peer.body = "x" * 10_000
    client = FederationClient(setup.grants, cache_max_bytes=25_000)  # type: ignore[arg-type]
    try:
        for row_id in ("row-1", "row-2", "row-3"):
            assert await _code_of(client, _get(row_id)) == "fresh"
        await setup.peer.go_offline()
        assert await _code_of(client, _get("row-1")) == "NETWORK"
        assert await _code_of(client, _get("row-2")) == "stale"
        assert await _code_of(client, _get("row-3")) == "stale"
    finally:
        await client.close()


async def test_expired_answers_leave_memory_without_another_query(setup: Setup) -> None:
    client = FederationClient(setup.grants, cache_ttl_s=0.1)  # type: ignore[arg-type]
    try:
        assert await _code_of(client, _get("row-1")) == "fresh"
        assert len(client._cache) == 1
        for _ in range(500):  # well past the TTL; no query meanwhile
            if not len(client._cache):
                break
            await asyncio.sleep(0.01)
        assert len(client._cache) == 0 and client._cache.size == 0
    finally:
        await client.close()


# ---- our own certificate -----------------------------------------------------------------


def _assert_expired(error: PeerError) -> None:
    assert error.code == "UNAUTHENTICATED"
    assert "our client certificate for peer b expired at" in error.message
    ours = error.to_service_error()
    assert ours.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "peer add" in ours.remediation and "renew before" in ours.remediation


async def test_an_expired_client_certificate_is_named_not_blamed_on_the_network(
    setup: Setup,
) -> None:
    """B's handshake refuses an expired certificate, which gRPC reports as UNAVAILABLE:
    without a check of our own the operator hears "is the peer running?"."""
    setup.grants.current = EXPIRED
    for request in (_capabilities(), _get("row-1")):
        with pytest.raises(PeerError) as caught:
            await setup.client.query(request)
        _assert_expired(caught.value)
    with pytest.raises(PeerError) as caught:
        await setup.client.renew("b", "csr")
    _assert_expired(caught.value)
    assert setup.client.builds == 0


async def test_a_certificate_that_expires_after_the_build_serves_nothing_stale(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel was built while the certificate was valid and an answer is cached; once
    it has expired no call is made with it and the cached answer is not served."""
    setup.peer.release.set()
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    # The test certificates are valid for a year.
    expires = client_module._utcnow() + dt.timedelta(days=400)
    monkeypatch.setattr(client_module, "_utcnow", lambda: expires)
    with pytest.raises(PeerError) as caught:
        await setup.client.query(_capabilities())
    _assert_expired(caught.value)
    with pytest.raises(PeerError) as caught:
        await setup.client.renew("b", "csr")
    _assert_expired(caught.value)


def _assert_not_yet_valid(error: PeerError) -> None:
    assert error.code == "NETWORK"
    assert "our client certificate for peer b is not valid before" in error.message
    assert "by this machine's clock" in error.message
    assert "clock" in error.to_service_error().remediation


async def test_a_client_certificate_not_yet_valid_is_named_not_blamed_on_the_network(
    setup: Setup,
) -> None:
    """Clock skew: our certificate's validity begins in an hour. B's handshake refuses it,
    which gRPC reports as UNAVAILABLE: the operator must hear that a clock is off, not "is
    the peer running?"."""
    setup.peer.release.set()
    setup.grants.current = NOT_YET_VALID
    for request in (_capabilities(), _get("row-1")):
        with pytest.raises(PeerError) as caught:
            await setup.client.query(request)
        _assert_not_yet_valid(caught.value)
    with pytest.raises(PeerError) as caught:
        await setup.client.renew("b", "csr")
    _assert_not_yet_valid(caught.value)


async def test_our_clock_alone_behind_does_not_stop_queries_the_peer_accepts(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only B's clock decides whether B accepts the certificate: when this machine's clock
    alone says the validity has not begun (it stepped back), a query B answers is answered,
    and when B then goes offline its answer is served stale, as for any outage."""
    setup.peer.release.set()
    stepped_back = client_module._utcnow() - dt.timedelta(days=7)  # before the test certs
    monkeypatch.setattr(client_module, "_utcnow", lambda: stepped_back)
    assert await _code_of(setup.client, _capabilities()) == "fresh"
    await setup.peer.go_offline()
    assert await _code_of(setup.client, _capabilities()) == "stale"


# ---- reconnecting --------------------------------------------------------------------------


async def test_peer_channels_retry_a_lost_connection_within_seconds(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC's default backoff grows to 120 s between reconnection attempts, and calls fail
    at once meanwhile: after an outage A would keep failing for minutes once B is back.
    What is checked is the channel's setting, not a time (tests assert no timings; the
    reviewer's measurement is in the commit message)."""
    built: list[dict[str, Any]] = []
    real = client_module.secure_channel

    def recording(*args: Any, **kwargs: Any) -> grpc.aio.Channel:
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(client_module, "secure_channel", recording)
    await setup.client.channel("b")
    options = dict([*CLIENT_OPTIONS, *(built[0].get("extra_options") or [])])
    assert options["grpc.initial_reconnect_backoff_ms"] <= 1000
    assert options["grpc.max_reconnect_backoff_ms"] <= 5000
