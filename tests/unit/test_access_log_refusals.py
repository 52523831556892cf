"""The access log bounds refusals: a burst of the same refusal (a peer over its rate
limit) is one INFO line, then one line with how many were not logged, per window, instead
of one line per request. Metrics still count every request. Driven through
ServerInterceptor's wrapper, as a listener runs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from mosaic.errors import ServiceError
from mosaic.rpc import interceptors
from mosaic.rpc.interceptors import REFUSALS_SUPPRESSED, ServerInterceptor
from tests.support.logs import JsonLines, captured

METHOD = "/mosaic.federation.v1.PeerEnrollment/Redeem"
WINDOW_S = 0.3


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[JsonLines]:
    monkeypatch.setattr(interceptors, "REFUSAL_LOG_WINDOW_S", WINDOW_S)
    monkeypatch.setattr(interceptors, "_refusals", interceptors._RefusalLog())
    with captured("mosaic.rpc", logging.INFO) as handler:
        yield handler


class _Context:
    def set_trailing_metadata(self, _metadata: Any) -> None:
        pass

    async def abort_with_status(self, _status: grpc.Status) -> None:
        pass


def _handler(refusals: list[ServiceError]) -> Any:
    """The wrapped unary handler of METHOD; each call is refused with the next refusal."""

    async def behavior(_request: Any, _context: Any) -> Any:
        raise refusals.pop(0)

    interceptor = ServerInterceptor(authorize=None, trust_request_id=False)
    handler = grpc.unary_unary_rpc_method_handler(behavior)
    return interceptor._wrap(handler, METHOD).unary_unary


def _refusal(code: grpc.StatusCode, reason: str) -> ServiceError:
    return ServiceError(code, reason, "refused")


async def _call(wrapped: Any) -> None:
    with pytest.raises(ServiceError):
        await wrapped(object(), _Context())


async def test_a_burst_of_refusals_is_a_bounded_number_of_lines_with_the_count(
    lines: JsonLines,
) -> None:
    limited = grpc.StatusCode.RESOURCE_EXHAUSTED
    refusals = [_refusal(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_UNKNOWN") for _ in range(5)]
    refusals += [_refusal(limited, "RATE_LIMITED") for _ in range(995)]
    wrapped = _handler(refusals)
    for _ in range(1000):
        await _call(wrapped)

    # The first of each kind of refusal is logged at once, as before, under its request id.
    first = lines.at("info")
    assert [(line["msg"], line["reason"]) for line in first] == [
        ("rpc", "TOKEN_UNKNOWN"),
        ("rpc", "RATE_LIMITED"),
    ]
    assert all(line.get("request_id") for line in first)

    await asyncio.sleep(WINDOW_S * 2)  # the windows close
    summaries = [line for line in lines.at("info") if line["msg"] == REFUSALS_SUPPRESSED]
    assert sorted((s["reason"], s["code"], s["suppressed"]) for s in summaries) == [
        ("RATE_LIMITED", "RESOURCE_EXHAUSTED", 994),
        ("TOKEN_UNKNOWN", "UNAUTHENTICATED", 4),
    ]
    assert all(s["method"] == METHOD and "request_id" not in s for s in summaries)
    assert len(lines.at("info")) == 4

    # The next window starts with a refusal logged at once again.
    await _call(_handler([_refusal(limited, "RATE_LIMITED")]))
    assert [line["msg"] for line in lines.at("info")[4:]] == ["rpc"]


async def test_at_debug_every_refusal_is_still_logged(lines: JsonLines) -> None:
    logging.getLogger("mosaic.rpc").setLevel(logging.DEBUG)
    wrapped = _handler(
        [_refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") for _ in range(50)]
    )
    for _ in range(50):
        await _call(wrapped)
    assert len([line for line in lines.lines if line["msg"] == "rpc"]) == 50
    assert len(lines.at("info")) == 1


async def test_a_refusal_whose_window_saw_no_other_leaves_no_summary(lines: JsonLines) -> None:
    await _call(_handler([_refusal(grpc.StatusCode.PERMISSION_DENIED, "CERT_REVOKED")]))
    await asyncio.sleep(WINDOW_S * 2)
    assert [line["msg"] for line in lines.at("info")] == ["rpc"]
