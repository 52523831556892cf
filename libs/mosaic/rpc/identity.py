"""Who is calling: the service identity (SPIFFE URI SAN) or the peer certificate."""

from __future__ import annotations

import functools

import grpc
from cryptography import x509


@functools.lru_cache(maxsize=4096)
def parse_certificate(pem: bytes) -> x509.Certificate:
    """Parse a peer certificate once per distinct certificate, not once per request."""
    return x509.load_pem_x509_certificate(pem)


def peer_certificate_pem(context: grpc.aio.ServicerContext) -> bytes | None:
    auth = context.auth_context()
    values = auth.get("x509_pem_cert")
    return values[0] if values else None


def peer_certificate(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    pem = peer_certificate_pem(context)
    return parse_certificate(pem) if pem else None


@functools.lru_cache(maxsize=4096)
def _spiffe_ids(pem: bytes) -> tuple[str, ...]:
    cert = parse_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("spiffe://")
    )


def caller_spiffe_id(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's SPIFFE id, from the verified client certificate; None without one."""
    pem = peer_certificate_pem(context)
    if pem is None:
        return None
    ids = _spiffe_ids(pem)
    return ids[0] if len(ids) == 1 else None
